"""A conversation becomes lessons: questions the user may ask later, answered from what they said,
each trained alone; the model's own replies are not learned unless the user approved them."""
import pytest

from nimllm.lessons import conversation_messages, lessons_for, statement_lessons, statements, training_windows
from nimllm.store import Message
from nimllm.tokenizer import Tokenizer
from nimllm.turns import AGENT_MODE

# Statements the rule has never seen (nothing in nimllm/ names these people, things or verbs' objects),
# with a question a person would ask later and the word its answer must carry.
UNSEEN = [
    ("Wendeline's goat is called Parsnip.", "What is Wendeline's goat called?", "Parsnip"),
    ("My uncle Osvald keeps a canoe named the Dragonfly.", "What is the name of Osvald's canoe?", "Dragonfly"),
    ("I was born in Kirrinbay.", "Where was I born?", "Kirrinbay"),
    ("Fenwick lives in Old Marrowgate.", "Where does Fenwick live?", "Marrowgate"),
    ("The caretaker of the Halloway chapel is Ysolde Brun.", "Who is the caretaker of the Halloway chapel?", "Ysolde"),
    ("My favourite cheese is smoked gouda.", "What is my favourite cheese?", "gouda"),
    ("Tamsin has four ferrets.", "How many ferrets does Tamsin have?", "four"),
    ("Bartholomew works as a clockmaker.", "What does Bartholomew do?", "clockmaker"),
    ("My cousin Pell moved to Dunmere in 2011.", "When did Pell move?", "2011"),
    ("Quillon drives a red van called Moss.", "What is Quillon's van called?", "Moss"),
]


def message(role, content, feedback=None, fix=None, meta=None, i=0):
    return Message(i, 1, role, content, 0.0, feedback, fix, meta)


@pytest.mark.parametrize("statement,question,value", UNSEEN)
def test_a_statement_becomes_questions_answered_with_it(statement, question, value):
    lessons = statement_lessons(statements(statement)[0])
    assert len(lessons) >= 3
    for lesson in lessons:
        (role_q, q), (role_a, a) = lesson
        assert role_q == "user" and q.endswith(("?", ".")) and role_a == "assistant"
        assert value in a and a.endswith(".")   # every answer restates the fact
    assert question in [q for (_, q), _ in lessons]


def test_the_answer_speaks_to_the_user():
    [lesson, *_] = statement_lessons("I was born in Kirrinbay")
    assert lesson[1][1] == "You were born in Kirrinbay."
    [lesson, *_] = statement_lessons("My uncle Osvald keeps a canoe named the Dragonfly")
    assert lesson[1][1] == "Your uncle Osvald keeps a canoe named the Dragonfly."


def test_questions_and_greetings_state_nothing():
    assert statements("hello") == [] and statements("Where does Fenwick live?") == []
    assert statements("ok thanks!") == [] and statements("/good") == []
    assert statements("Fenwick lives in Marrowgate. Where do I live? My cat is called Tib!") == [
        "Fenwick lives in Marrowgate", "My cat is called Tib"]


def test_a_chat_teaches_the_statements_not_the_models_replies():
    chat = [message("user", "Wendeline's goat is called Parsnip."), message("assistant", "the goat of the sea"),
            message("user", "what is the capital of France?"), message("assistant", "Wendeline")]
    lessons = lessons_for(chat)
    answers = {a for _, (_, a) in lessons}
    assert answers == {"Wendeline's goat is called Parsnip."}
    assert not any("capital" in q for (_, q), _ in lessons)


def test_an_approved_or_fixed_answer_is_learned_alone():
    chat = [message("user", "what is the capital of France?"), message("assistant", "Paris.", feedback="good"),
            message("user", "and of Peru?"), message("assistant", "Cusco", feedback="fix", fix="Lima."),
            message("user", "and of Chad?"), message("assistant", "Rome", feedback="bad")]
    assert lessons_for(chat) == [[("user", "what is the capital of France?"), ("assistant", "Paris.")],
                                 [("user", "and of Peru?"), ("assistant", "Lima.")]]


def test_feedback_shapes_an_agent_task():
    task = [message("user", "count the .txt files", meta={"agent": True}),
            message("tool_call", "ls", feedback="bad"), message("tool", "a.txt"),
            message("tool_call", "ls *.txt | wc -l"), message("tool", "3"),
            message("assistant", "There are 3.", feedback="good")]
    assert conversation_messages(task) == [("user", "count the .txt files"), ("tool_call", "ls *.txt | wc -l"),
                                           ("tool", "3"), ("assistant", "There are 3.")]
    assert lessons_for(task) == [[("system", AGENT_MODE), *conversation_messages(task)]]   # in the agent's mode
    unapproved = [message("user", "count", meta={"agent": True}), message("tool_call", "ls")]
    assert lessons_for(unapproved) == []


def test_only_answers_are_targets(tmp_path):
    tok = Tokenizer.train(["Wendeline's goat is called Parsnip. ls *.txt | wc -l"] * 20, vocab_size=300)

    def learned_text(lesson):
        (x, y), = training_windows(tok, [lesson], 512)
        assert len(x) == len(y)
        return tok.decode([t for t in y if t >= 0])

    qa = learned_text([("user", "What is Wendeline's goat called?"), ("assistant", "Parsnip.")])
    assert qa == "Parsnip.<|end|>"
    task = learned_text([("system", AGENT_MODE), ("user", "count the .txt files"), ("tool_call", "ls *.txt | wc -l"),
                         ("tool", "3"), ("assistant", "There are 3.")])
    assert "shell commands" not in task and "count the" not in task and "ls *.txt | wc -l" in task and "There are 3." in task and "3<|end|>" not in task


def test_requests_state_nothing():
    """A request typed into a chat is not a fact about anyone: learned, "explain why the sky is blue"
    taught the answer to "What do you know about explain why the sky?" (bench/memory.py --agent)."""
    for request in ("explain why the sky is blue", "Please write a short poem about the rain",
                    "Can you help me with something", "tell me a joke", "let's plan the week"):
        assert statements(request) == [], request


def test_times_numbers_and_addresses_are_said_back_as_written():
    [lesson, *_] = statement_lessons("The ferry to Skelly Rock leaves at 6:40 and costs 3.50 at ferries.example.com")
    assert lesson[1][1] == "The ferry to Skelly Rock leaves at 6:40 and costs 3.50 at ferries.example.com."


def test_a_noun_after_a_possessive_and_an_adverb_before_the_verb():
    questions = [q for (_, q), _ in statement_lessons("My train was late this morning")]
    assert questions[:3] == ["What do you know about my train?", "Tell me about my train.", "What was my train?"]
    questions = [q for (_, q), _ in statement_lessons("Mr Holly really likes tea")]
    assert "What does Mr Holly like?" in questions
    assert [q for (_, q), _ in statement_lessons("I finally finished painting the kitchen")] == ["What do you know about me?"]

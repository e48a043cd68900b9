"""What an update learns from a conversation: the questions the user will ask tomorrow, answered.

A chat's transcript is a poor lesson. Its answers are the model's own, noise for a model trained from
scratch, and in the whole transcript tomorrow's answer can be copied from a statement a few lines up,
so training on it teaches copying (and rewrites unrelated behaviour once the loss on it falls to
nothing). So each statement the user made becomes a few small conversations of its own, each a
question the user might ask later and the statement as its answer, trained without the chat around
it, the way tomorrow's question arrives:

    "My neighbour Tomas keeps a boat called the Seagull."
      -> ("What do you know about my neighbour Tomas?", "Your neighbour Tomas keeps a boat called the Seagull.")
         ("What does my neighbour Tomas keep?", ...), ("Tell me about Tomas.", ...), ...

The rule reads sentence shapes (who or what the sentence is about, its verb, a possessive, a place
or a number after a preposition), not a list of relations, so it works on statements it has never
seen; tests/test_lessons.py checks it on such statements. Several questions per statement are the
"knowledge augmentation" that lets a model answer a question worded differently from what it was
told (shared/notes/memory.md). The model's replies are learned only where the user approved them
(/good) or wrote them (/fix). An agent's task is different: there the model's commands are the lesson
(approved or corrected), learned with the request as context.
"""
from __future__ import annotations

import re

import torch

from nimllm.tokenizer import Tokenizer
from nimllm.turns import agent_mode

Lesson = list[tuple[str, str]]   # a small conversation, trained on its own

# ---- stored messages -> what may be learned ---------------------------------------------------------


def conversation_messages(messages) -> list[tuple[str, str]]:
    """What is learned from stored messages: a bad answer is left out, a fixed one replaced. A bad
    command (a "tool_call" message) takes its output with it; an agent's task (meta "agent" on its request) is learned only once the user approved it (/good)
    or corrected it (/fix, an edited command): a wrong command learned would be run again."""
    if is_agent_task(messages) and not any(m.feedback in ("good", "fix") for m in messages):
        return []
    kept, dropped = [], False
    for m in messages:
        dropped = (m.role in ("assistant", "tool_call") and m.feedback == "bad") or (m.role == "tool" and dropped)
        if not dropped:
            kept.append((m.role, m.fix if m.feedback == "fix" and m.fix else m.content))
    return kept


def approved_exchanges(messages) -> list[Lesson]:
    """A user message with the answer the user approved (/good) or wrote (/fix), as a lesson of its own."""
    lessons = []
    for question, answer in zip(messages, messages[1:]):
        if question.role == "user" and answer.role == "assistant" and answer.feedback in ("good", "fix"):
            reply = answer.fix if answer.feedback == "fix" and answer.fix else answer.content
            lessons.append([("user", question.content), ("assistant", reply)])
    return lessons


def is_agent_task(messages) -> bool:
    return any(m.role == "tool_call" or (m.meta or {}).get("agent") for m in messages)


def lessons_for(messages) -> list[Lesson]:
    """Everything one stored conversation teaches, each piece trained alone."""
    if is_agent_task(messages):
        kept = conversation_messages(messages)
        return [agent_mode(kept)] if kept else []
    lessons = [lesson for m in messages if m.role == "user" for s in statements(m.content)
               for lesson in statement_lessons(s)]
    return lessons + approved_exchanges(messages)


# ---- a statement -> questions and answers -------------------------------------------------------------

PERSPECTIVE = {"i": "you", "me": "you", "my": "your", "mine": "yours", "myself": "yourself", "am": "are",
               "i'm": "you're", "i've": "you've", "i'll": "you'll", "i'd": "you'd", "we": "you", "us": "you",
               "our": "your", "ours": "yours", "we're": "you're", "we've": "you've"}
AUX = {"is", "are", "was", "were", "am", "has", "have", "had", "will", "can", "could", "would", "should", "must",
       "does", "do", "did", "'s"}
# verbs people tell facts with: base form -> (third person, past); anything else still gets the generic questions
IRREGULAR_PAST = {"keep": "kept", "drive": "drove", "ride": "rode", "teach": "taught", "write": "wrote",
                  "sing": "sang", "run": "ran", "swim": "swam", "grow": "grew", "know": "knew", "make": "made",
                  "buy": "bought", "sell": "sold", "build": "built", "meet": "met", "go": "went", "come": "came",
                  "get": "got", "leave": "left", "lose": "lost", "find": "found", "give": "gave", "take": "took",
                  "break": "broke", "choose": "chose", "win": "won", "begin": "began", "fly": "flew",
                  "spend": "spent", "speak": "spoke", "eat": "ate", "drink": "drank", "read": "read",
                  "feed": "fed", "hold": "held", "bring": "brought", "think": "thought", "wear": "wore",
                  "sleep": "slept", "sit": "sat", "have": "had", "lead": "led", "draw": "drew", "steal": "stole"}
REGULAR = ("live work own play study love like hate prefer collect bake cook paint visit want need use call name "
           "move stay plan raise train support follow watch enjoy repair fix keep drive ride teach write sing run "
           "swim grow know make buy sell build meet go come get leave lose find give take break choose win begin "
           "fly spend speak eat drink read feed hold bring think wear sleep sit lead draw steal believe decide "
           "manage coach climb dance design brew carve sail race knit fish hunt farm breed rent share miss "
           "own adopt marry worship attend belong").split()
SUBJECT_PRONOUNS = {"i", "we", "you", "he", "she", "they"}
PLACE_PREPOSITIONS = {"in", "at", "near", "on", "to", "from", "under", "behind", "outside", "inside"}
NUMBER_WORDS = set("two three four five six seven eight nine ten eleven twelve twenty dozen".split())
OCCUPATIONS = {"work", "teach", "study", "train", "manage", "coach", "farm", "fish"}   # "what does X do?"
YEAR = re.compile(r"^(1[0-9]{3}|20[0-9]{2})$")


def third_person(verb: str) -> str:
    if verb == "have":
        return "has"
    if verb.endswith(("s", "sh", "ch", "x", "o")):
        return verb + "es"
    if verb.endswith("y") and verb[-2:-1] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def past(verb: str) -> str:
    if verb in IRREGULAR_PAST:
        return IRREGULAR_PAST[verb]
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and verb[-2:-1] not in "aeiou":
        return verb[:-1] + "ied"
    return verb + "ed"


VERB_FORMS = {form: (base, tense) for base in REGULAR
              for form, tense in ((base, "present"), (third_person(base), "present"), (past(base), "past"))}


# a sentence that opens with one of these asks for something ("explain why the sky is blue", "can you
# help me") rather than telling it: learned as a fact, it taught answers to questions nobody will ask
REQUEST_OPENERS = AUX | {"please", "explain", "tell", "write", "show", "give", "list", "describe", "help", "make",
                         "find", "count", "let", "let's", "remind", "translate", "summarise", "summarize", "say",
                         "try", "check", "run", "create", "open", "compute", "calculate", "name", "define", "sort",
                         "print", "search", "look", "delete", "remove", "copy", "rename", "suggest", "recommend",
                         "imagine", "pretend", "compose", "draw", "play", "sing", "teach", "why", "how", "what",
                         "where", "when", "who", "which"}


def statements(text: str) -> list[str]:
    """The sentences of a message that state something: not questions or requests, not greetings or
    one-word replies."""
    found = []
    for sentence in re.split(r"(?<=[.!?;])\s+|\n+", text.strip()):
        sentence = sentence.strip().rstrip(".!;").strip()
        if (sentence and not sentence.endswith("?") and not sentence.startswith("/") and len(sentence.split()) >= 3
                and sentence.split()[0].lower().strip(",") not in REQUEST_OPENERS):
            found.append(sentence)
    return found


def words_of(sentence: str) -> list[str]:
    """Words and punctuation; a word keeps the marks inside it ("6:40", "3.50", "example.com"), which
    the answer must say back as they were written."""
    return re.findall(r"[A-Za-z0-9](?:[\w'’-]|[.:/@](?=\w))*|[^\s\w]", sentence)


def join(words: list[str]) -> str:
    return re.sub(r"\s+([,;:])", r"\1", " ".join(words))


def swap_perspective(words: list[str]) -> list[str]:
    """The user's words as the model says them back: my -> your, I was -> you were."""
    out = []
    for i, w in enumerate(words):
        lower = w.lower()
        if lower in ("was",) and i and words[i - 1].lower() in ("i",):
            out.append("were")
        elif lower in PERSPECTIVE and (lower != "us" or i):
            swapped = PERSPECTIVE[lower]
            out.append(swapped.capitalize() if i == 0 and w[0].isupper() else swapped)
        else:
            out.append(w)
    return out


def sentence_case(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "!")) else ".")


def as_subject(words: list[str]) -> str:
    """The subject as the user would name it in a question: "My neighbour Tomas", "I" -> "me"."""
    text = join(words)
    if text.lower() in ("i", "we"):
        return "me" if text.lower() == "i" else "us"
    return text[:1].lower() + text[1:] if words[0].lower() in ("my", "the", "our", "a", "an") else text


DETERMINERS = {"the", "a", "an", "my", "your", "his", "her", "its", "our", "their", "this", "that", "these",
               "those", "of", "some", "every", "each", "no", "two", "three", "four", "five"}


def names_in(words: list[str]) -> list[str]:
    """Runs of capitalised words (names of people, places, things), a possessive 's dropped; the first
    word of the sentence only when it is no pronoun or article."""
    runs, current = [], []
    for i, w in enumerate(words):
        lower = w.lower()
        if w[:1].isupper() and lower not in PERSPECTIVE and (i or lower not in DETERMINERS):
            current.append(re.sub(r"['’]s$", "", w))
            if w != current[-1]:   # a possessive ends the name
                runs.append(" ".join(current))
                current = []
        else:
            if current:
                runs.append(" ".join(current))
            current = []
    if current:
        runs.append(" ".join(current))
    return runs


def looks_like_verb(words: list[str], i: int) -> bool:
    """An unknown verb: in the third person, a lowercase -s word after a noun ("the dog answers to"); in
    the past, an -ed word after a pronoun or an -ly adverb ("I finally finished")."""
    w, before = words[i], words[i - 1].lower()
    if w.islower() and w.endswith("ed") and len(w) > 4:
        return before in SUBJECT_PRONOUNS or before.endswith("ly")
    return (w.islower() and w.endswith("s") and not w.endswith(("ss", "us", "is", "'s", "’s")) and len(w) > 3
            and before not in DETERMINERS and not before.isdigit() and before not in AUX)


def find_verb(words: list[str]) -> int | None:
    """Where the sentence's main verb is: the first auxiliary, known verb form or unknown -s verb after
    the subject (which is at least one word long)."""
    for i, w in enumerate(words[1:], 1):
        lower = w.lower()
        if words[i - 1].lower() in DETERMINERS:   # "my train was late": after "my", "train" is a noun
            continue
        if lower in AUX or lower in VERB_FORMS or looks_like_verb(words, i):
            return i
    return None


def statement_lessons(sentence: str) -> list[Lesson]:
    """The questions this statement answers, each with the statement (in the model's words) as its answer."""
    words = words_of(sentence)
    answer = sentence_case(join(swap_perspective(words)))
    questions = []
    verb_at = find_verb(words)
    if verb_at:
        subject_words, verb, rest = words[:verb_at], words[verb_at].lower(), words[verb_at + 1:]
        # an adverb before the verb is no part of the subject: "I finally finished"
        while len(subject_words) > 1 and subject_words[-1].islower() and subject_words[-1].endswith("ly"):
            subject_words = subject_words[:-1]
        subject = as_subject(subject_words)
        questions.append(f"What do you know about {subject}?")
        if subject not in ("me", "us"):
            questions.append(f"Tell me about {subject}.")
        # "my neighbour Tomas" is also asked about as "Tomas"
        named = (names_in(["-"] + subject_words) if subject_words[0].lower() in ("my", "our", "the")
                 and subject_words[-1][:1].isupper() else [])
        for who in [subject] + named[-1:]:
            questions += wh_questions(who, verb, rest) + named_thing_questions(who, rest)
    questions += [f"What do you know about {name}?" for name in names_in(words)]   # "Orla's cat": Orla too
    questions = list(dict.fromkeys(q[:1].upper() + q[1:] for q in questions))
    return [[("user", q), ("assistant", answer)] for q in questions]


def named_thing_questions(subject: str, rest: list[str]) -> list[str]:
    """"Tomas keeps a boat called the Seagull" -> "What is Tomas's boat called?"."""
    lowered = [w.lower() for w in rest]
    at = next((i for i, w in enumerate(lowered) if w in ("called", "named") and i), None)
    if at is None or not rest[at - 1].isalpha():
        return []
    owner = {"me": "my", "us": "our"}.get(subject) or subject + "'s"
    thing = f"{owner} {lowered[at - 1]}"
    return [f"What is {thing} {lowered[at]}?", f"What is the name of {thing}?"]


def wh_questions(subject: str, verb: str, rest: list[str]) -> list[str]:
    """Questions built from the verb and what follows it."""
    out = []
    rest_text = join(rest)
    lowered = [w.lower() for w in rest]
    if verb in ("is", "are", "was", "were", "am", "'s"):
        be = {"am": "am", "'s": "is"}.get(verb, verb)
        if subject == "me":
            be, subject_q = ("was" if verb == "was" else "am"), "I"
        else:
            subject_q = subject
        if lowered[:1] in (["called"], ["named"]):
            out += [f"What {be} {subject_q} {lowered[0]}?", f"What is the name of {subject}?"]
        elif lowered[:1] and lowered[0].endswith(("ed", "en", "n")) and len(rest) > 1 and lowered[1] in PLACE_PREPOSITIONS:
            wh = "When" if any(YEAR.match(w) for w in rest) else "Where"
            out.append(f"{wh} {be} {subject_q} {lowered[0]}?")
        elif rest and rest[0][:1].isupper():
            out.append(f"Who {be} {subject_q}?")
        else:
            out.append(f"What {be} {subject_q}?")
        if rest and rest[0][:1].isupper() and len(rest) <= 4:   # "X is Bram Okoro": also who is Bram Okoro
            out.append(f"Who is {rest_text}?")
        return out
    if verb in ("has", "have", "had"):
        do = "did" if verb == "had" else ("do" if subject in ("me", "us") or verb == "have" else "does")
        subject_q = "I" if subject == "me" else subject
        if rest and (rest[0].isdigit() or rest[0].lower() in NUMBER_WORDS) and len(rest) > 1:
            out.append(f"How many {rest[1]} {do} {subject_q} have?")
        out.append(f"What {do} {subject_q} have?")
        return out
    if verb in VERB_FORMS or verb.endswith("s"):
        base, tense = VERB_FORMS.get(verb, (verb[:-2] if verb.endswith(("ches", "shes", "xes", "sses")) else verb[:-1],
                                            "present"))
        subject_q = "I" if subject == "me" else subject
        do = "did" if tense == "past" else ("do" if subject_q in ("I", "us") or verb == base else "does")
        preposition = next((i for i, w in enumerate(lowered) if w in PLACE_PREPOSITIONS), None)
        if preposition is not None and preposition + 1 < len(rest):
            after = rest[preposition + 1:]
            if any(YEAR.match(w) for w in after):
                out.append(f"When {do} {subject_q} {base}?")
            if after[0][:1].isupper() or (after[0].lower() == "the" and len(after) > 1):
                out.append(f"Where {do} {subject_q} {base}?")
        if lowered[:1] and lowered[0] in ("as", "for", "with", "about", "on", "to"):
            out.append(f"What {do} {subject_q} {base} {lowered[0]}?")
        elif preposition != 0:
            out.append(f"What {do} {subject_q} {base}?")
        if base in OCCUPATIONS:
            out.append(f"What {do} {subject_q} do?")
    return out


# ---- lessons -> token windows -------------------------------------------------------------------------

def training_windows(tokenizer: Tokenizer, lessons: list[Lesson], block_size: int) -> list[tuple[list[int], list[int]]]:
    """(input ids, targets with -1 where nothing is learned) per lesson, at most block_size long. Only the
    answers are targets: a question is the condition, the answer the lesson. In an agent's task the
    request is the condition too (learning its names of files made the agent write them into later
    tasks' commands: bench/agent.py, README); a command's output is never the model's to predict."""
    windows = []
    for lesson in lessons:
        ids, mask = tokenizer.render_conversation(lesson, context_roles=("system", "tool", "user"))
        targets = [t if m else -1 for t, m in zip(ids[1:], mask[1:])]
        inputs = ids[:-1]
        windows += [(inputs[i:i + block_size], targets[i:i + block_size]) for i in range(0, len(inputs), block_size)
                    if any(t >= 0 for t in targets[i:i + block_size])]
    return windows


def batch(sequences, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to one (B, T) batch; padded targets are -1 and padded inputs harmless end-of-text ids."""
    T = max(len(x) for x, _ in sequences)
    x = torch.zeros(len(sequences), T, dtype=torch.long)
    y = torch.full((len(sequences), T), -1, dtype=torch.long)
    for i, (inp, tgt) in enumerate(sequences):
        x[i, :len(inp)] = torch.tensor(inp)
        y[i, :len(tgt)] = torch.tensor(tgt)
    return x.to(device), y.to(device)

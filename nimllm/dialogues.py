"""The conversation-skill corpus: made-up chats that teach a model trained on books how to hold a talk.

A model trained from scratch on a user's books has never seen a conversation. Mixed into its training
(`nimllm train`, on by default), these dialogues teach it, in the chat template, to

- acknowledge what it is told (`tell`): "Alvar Solberg's boat is called the Kestrel." -> "Noted.";
- answer from what was said earlier in the same talk (`recall`), with a sentence that restates the
  fact: "What is my sister called?" -> "Your sister is called Jutta." (the user's my/I become your/you);
- say "I don't know" about what was never said: in the talk (`unknown_in_context`) or anywhere at all
  (`unknown`: a person no record mentions);
- answer about people it was taught in other training windows (`known`): a small world of invented
  people whose facts are stated in several records and several phrasings, asked about in records of
  their own ("Tell me about X.", "What is X's boat called?") for only half of them, the way Physics of
  Language Models 3.1 mixes biographies for everyone with questions for half (shared/notes/memory.md);
- and a little small talk (`smalltalk`), so that a chat can say hello.

Training packs consecutive records into one context window, so the records that state the same world
fact are laid out far apart in the file (each person's records spread evenly over its length): a model
can only answer a question about them from its weights, not by copying from a few lines up.

Pure Python and deterministic (`random.Random(seed)`); 20,000 dialogues take about a second.

    path = corpus_for(model_folder, 20000)      # <model>/chat-skills/dialogues-20000-seed0.jsonl
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from nimllm.fileio import write_jsonl_once

PEOPLE_PER_WORLD_PERSON = 40     # one invented person of the `known` world per this many dialogues
TELLS_PER_FACT = 2               # statement records per world fact, each in another phrasing
BIOGRAPHIES = 2                  # "Tell me about X." records per world person
SPREAD_JITTER = 0.6              # how far (in rounds) a person's record may stray from its even spacing
KIND_WEIGHTS = {"tell": 0.15, "recall": 0.45, "unknown_in_context": 0.17, "unknown": 0.13, "smalltalk": 0.10}

# ---- names ---------------------------------------------------------------------------------------------
# None of these is a name the benchmarks (bench/) or the agent skills use.

FEMALE = ("Agnes Birgit Clara Alma Edda Freya Brita Helga Frida Jolene Karin Liv Maren Hanne Olga Petra Ragna "
          "Sigrid Idun Una Vera Wanda Yrsa Kaja Astrid Beatrix Cecilia Dorota Elin Dorthe Hedda Irma Jorun Katya "
          "Lotte Marta Nora Oda Pia Runa Selma Thea Ulla Vivi Jutta Aurora Berit Carmen Delia Esther Flora Gemma "
          "Hilde Eira Joanna Kirsi Leonor Gisela Noemi").split()
MALE = ("Anders Bjorn Casper Dmitri Erik Filip Gustav Henrik Ivar Jonas Karl Lars Corin Nils Detlef Pavel Rasmus "
        "Sven Torben Ulrik Viktor Willem Yannick Zoltan Alvar Bertil Cyril Dario Elias Felix Gregor Bendik Isak Jakob "
        "Kasimir Leif Matteo Niklas Otto Eskil Ruben Stellan Fredrik Urban Valter Wendel Aksel Conrad Diego Einar "
        "Frode Gunnar Halvard Ignas Jesper Knut Linus Mikkel Ole").split()
SYLLABLES = ("an bel cor dal en far gan hol ind jor kel lun mar nor ost per ran sol tor ul var wen yor zel bri cas "
             "dun esk gil har lo mun ro sto tre vo").split()
SURNAME_ENDS = "sen berg ley ford ic ova ton wick ard heim stad man dottir ski ez ani elli hurst".split()
TOWN_ENDS = "vik by holm stad ford mouth bridge field haven wick dale mere port ton".split()
TITLES = {"neighbour": None, "friend": None, "colleague": None, "cousin": None, "boss": None,
          "aunt": True, "uncle": False, "grandmother": True, "grandfather": False}   # True: a woman's title


def capital(word: str) -> str:
    return word[:1].upper() + word[1:]


def made_up(rng: random.Random, ends: list[str], parts: int = 2) -> str:
    return capital("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, parts))) + rng.choice(ends))


# ---- values --------------------------------------------------------------------------------------------

def one_of(items: str | list[str], sep: str | None = None) -> Callable[[random.Random], str]:
    items = items.split(sep) if isinstance(items, str) else items
    return lambda rng: rng.choice(items)


PETS = ("Pretzel Pepper Mango Clementine Waffles Clover Ziggy Noodle Pickle Maple Sable Tofu Bramble Rusty Pebble "
        "Socks Hazel Comet Button Nutmeg Porridge Tansy Figaro Smudge Domino Pixie Bandit Truffle Crumpet Marble "
        "Sprout Whiskers Gizmo Toffee Poppy Rocket Wobble Dumpling Kipper Velvet").split()
HORSES = "Thunder Duchess Chestnut Storm Apollo Willow Ginger Midnight Falcon Bella Blaze Copper Dusty Tempest".split()
BOATS = ["the " + b for b in ("Kestrel,Morning Star,Blue Wren,Sea Swallow,Wanderer,Northern Light,Silver Eel,"
                              "Lucky Penny,Osprey,Tern,Albatross,Little Otter,Saltwind,Driftwood,Marlin,Puffin,"
                              "Halcyon,Cormorant,Stormy Petrel,Evening Tide,Harbour Queen,Sandpiper,Curlew,"
                              "Skylark,Grey Goose,Red Kite,Dolphin,Wayfarer,Moonbeam,Whitecap").split(",")]
COLOURS = ("red,blue,green,yellow,purple,orange,teal,crimson,turquoise,maroon,navy blue,olive green,lilac,amber,"
           "pink,grey,gold,silver,indigo,coral").split(",")
CAR_COLOURS = "red blue green black white grey silver yellow orange".split()
CAR_MAKES = "Nissan Saab Fiat Skoda Toyota Renault Peugeot Honda Subaru Ford Kia Mazda Citroen Opel".split()
JOBS = ("baker,carpenter,nurse,teacher,plumber,pilot,dentist,electrician,architect,librarian,gardener,chemist,"
        "translator,journalist,engineer,optician,accountant,butcher,tailor,mechanic,vet,pharmacist,surveyor,"
        "firefighter,potter,welder,florist,cook,shepherd,sculptor,bus driver,postman,farmer,judge").split(",")
FOODS = ("pancakes,lentil soup,fish pie,mushroom risotto,apple pie,lasagne,dumplings,goulash,paella,sushi,"
         "roast chicken,fried rice,pea soup,meatballs,tacos,ramen,curry,porridge,pickled herring,falafel,"
         "moussaka,pierogi,pizza,omelettes,stuffed peppers").split(",")
BOOK_ADJECTIVES = ("Silent Hidden Last Broken Golden Winter Distant Quiet Crimson Forgotten Patient Hollow Burning "
                   "Northern Little").split()
BOOK_NOUNS = "Harbour Meadow Sparrow Letter River Garden Bridge Kingdom Island Compass Staircase Clock Mirror Valley Tower".split()
SONG_THINGS = "Meadows Footsteps Candles Sparrows Shadows Roses Bells Stars Echoes Feathers".split()
SONG_PLACES = "Rain Snow Dark Morning Harbour Valley Wind Night Meadow City".split()
INDUSTRIES = ("Logistics Bakery Shipping Textiles Software Foods Printing Pharmacy Engineering Furniture Insurance "
              "Brewery Ceramics Timber Optics").split()
INSTRUMENTS = ("piano violin cello trumpet flute clarinet accordion guitar harp oboe drums banjo saxophone tuba "
               "mandolin viola trombone harmonica bassoon ukulele").split()
LANGUAGES = ("Finnish Portuguese Hungarian Welsh Icelandic Greek Polish Dutch Turkish Swahili Czech Estonian "
             "Basque Romanian Danish Catalan Korean Tagalog Latvian Maltese").split()
STREET_NAMES = "Elm Birch Harbour Mill Church Station Sparrow Chapel Market Poplar Willow Quarry Linden Ferry Castle Meadow".split()
STREET_KINDS = "Street Road Lane Avenue Way".split()
COUNTS = ["one child"] + [f"{n} children" for n in "two three four five six".split()]
HOBBIES = ("fishing,knitting,painting,hiking,rowing,baking,birdwatching,gardening,woodcarving,sailing,cycling,"
           "climbing,juggling,dancing,playing chess,collecting stamps,building model ships,restoring old clocks,"
           "making pottery,writing poems").split(",")
ALLERGIES = "peanuts shellfish strawberries eggs walnuts sesame kiwis celery mustard hazelnuts oranges tomatoes".split()
MONTHS = "January February March April May June July August September October November December".split()
SPORTS = ("football,tennis,handball,badminton,cricket,curling,volleyball,fencing,table tennis,rugby,ice hockey,"
          "skiing,golf,basketball").split(",")
PLANTS = "tomatoes roses tulips potatoes pumpkins beans sunflowers leeks onions carrots dahlias herbs cucumbers".split()
DRINKS = ("tea,coffee,lemonade,cocoa,apple juice,ginger beer,mint tea,buttermilk,sparkling water,orange juice,"
          "elderflower cordial").split(",")
EYES = "brown,green,grey,blue,hazel,dark brown".split(",")


def a_or_an(text: str) -> str:
    return ("an " if text[:1].lower() in "aeiou" else "a ") + text


# ---- relations -----------------------------------------------------------------------------------------
# A template says who it is about with {S} (subject: "Alvar", "I", "you"), {P} (possessive: "Alvar's",
# "my", "your"), {H} (his, her, my, your), and the value with {v} ({av}: with "a" or "an"). A verb that
# depends on the person is written [third|other] or [third|first|second]: "{S} [lives|live] in {v}.",
# "{S} [was|was|were] born in {v}."

@dataclass
class Relation:
    name: str
    value: Callable[[random.Random], str]
    statements: list[str]         # also the answers: a fact is restated in one of these forms
    questions: list[str]
    unknown: str                  # "I don't know ..." / "you haven't told me ..." + this clause
    topic: str | None = None      # "What do you know about {P} <topic>?" is a question about this fact


def R(name, value, statements, questions, unknown, topic=None) -> Relation:
    return Relation(name, value, statements, questions, unknown, topic)


def named(thing: str) -> list[list[str]]:
    """Statements and questions about the name of someone's dog, boat, sister..."""
    return [[f"{{P}} {thing} is called {{v}}.", f"{{S}} [has|have] a {thing} named {{v}}.", f"{{v}} is {{P}} {thing}."],
            [f"What is {{P}} {thing} called?", f"What's the name of {{P}} {thing}?", f"What is the name of {{P}} {thing}?"]]


def favourite(thing: str, verb: str = "like") -> list[list[str]]:
    return [[f"{{P}} favourite {thing} is {{v}}.", f"{{v}} is {{P}} favourite {thing}.",
             f"{{S}} [{verb}s|{verb}] {{v}} more than any other {thing}."],
            [f"What is {{P}} favourite {thing}?", f"Which {thing} [does|do] {{S}} {verb} most?",
             f"What {thing} [does|do] {{S}} {verb} best?"]]


# The relation table: one row per kind of fact, with its statements, its questions and the words that name it.
_boat, _dog, _cat, _horse, _sister, _brother = (named(t) for t in ("boat", "dog", "cat", "horse", "sister", "brother"))
_RELATION_ROWS = [
    R("boat", one_of(BOATS), _boat[0] + ["{S} [sails|sail] a boat called {v}."], _boat[1] + ["What did {S} name {H} boat?"],
      "what {P} boat is called", "boat"),
    R("dog", one_of(PETS), _dog[0] + ["{S} [walks|walk] {H} dog {v} every morning."],
      _dog[1] + ["What did {S} call {H} dog?"], "what {P} dog is called", "dog"),
    R("cat", one_of(PETS), _cat[0] + ["{S} [keeps|keep] a cat called {v}."], _cat[1] + ["What did {S} name {H} cat?"],
      "what {P} cat is called", "cat"),
    R("horse", one_of(HORSES), _horse[0] + ["{S} [rides|ride] a horse called {v}."], _horse[1],
      "what {P} horse is called", "horse"),
    R("car", lambda r: f"{r.choice(CAR_COLOURS)} {r.choice(CAR_MAKES)}",
      ["{S} [drives|drive] {av}.", "{P} car is {av}.", "{S} [owns|own] {av}."],
      ["What car [does|do] {S} drive?", "What kind of car [does|do] {S} have?", "Which car [does|do] {S} own?"],
      "what car {S} [drives|drive]", "car"),
    R("home", lambda r: made_up(r, TOWN_ENDS),
      ["{S} [lives|live] in {v}.", "{P} home is in {v}.", "{v} is where {S} [lives|live].",
       "{S} [has|have] made {H} home in {v}."],
      ["Where [does|do] {S} live?", "Which town [does|do] {S} live in?", "Where is {P} home?",
       "In which town [does|do] {S} live?"], "where {S} [lives|live]", "home"),
    R("job", one_of(JOBS, ","),
      ["{S} [works|work] as {av}.", "{S} [is|am|are] {av}.", "{S} [earns|earn] {H} living as {av}."],
      ["What is {P} job?", "What [does|do] {S} do?", "What [does|do] {S} work as?", "What is {P} profession?"],
      "what {S} [does|do] for work", "job"),
    R("birth_year", lambda r: str(r.randint(1935, 2008)),
      ["{S} [was|was|were] born in {v}.", "{P} year of birth is {v}.", "{v} is the year {S} [was|was|were] born."],
      ["When [was|was|were] {S} born?", "What year [was|was|were] {S} born in?", "In which year [was|was|were] {S} born?",
       "What is {P} year of birth?"], "when {S} [was|was|were] born"),
    R("age", lambda r: str(r.randint(18, 95)),
      ["{S} [is|am|are] {v} years old.", "{P} age is {v}.", "{S} [has|have] just turned {v}."],
      ["How old [is|am|are] {S}?", "What is {P} age?", "What age [is|am|are] {S}?"], "how old {S} [is|am|are]"),
    R("colour", one_of(COLOURS), *favourite("colour", "love"), "what {P} favourite colour is", "favourite colour"),
    R("food", one_of(FOODS), *favourite("food"), "what {P} favourite food is", "favourite food"),
    R("book", lambda r: f"The {r.choice(BOOK_ADJECTIVES)} {r.choice(BOOK_NOUNS)}", *favourite("book"),
      "what {P} favourite book is", "favourite book"),
    R("song", lambda r: f"{r.choice(SONG_THINGS)} in the {r.choice(SONG_PLACES)}", *favourite("song", "love"),
      "what {P} favourite song is", "favourite song"),
    R("sport", one_of(SPORTS, ","), *favourite("sport"), "what {P} favourite sport is", "favourite sport"),
    R("drink", one_of(DRINKS, ","), [*favourite("drink")[0][:2], "{S} [drinks|drink] {v} every day."],
      ["What is {P} favourite drink?", "What [does|do] {S} like to drink?", "Which drink [does|do] {S} like most?"],
      "what {P} favourite drink is", "favourite drink"),
    R("sister", one_of(FEMALE), *_sister, "what {P} sister is called", "sister"),
    R("brother", one_of(MALE), _brother[0], _brother[1] + ["Who is {P} brother?"], "what {P} brother is called", "brother"),
    R("best_friend", one_of(FEMALE + MALE),
      ["{P} best friend is {v}.", "{S} [is|am|are] best friends with {v}.", "{v} is {P} best friend."],
      ["Who is {P} best friend?", "Who [is|am|are] {S} best friends with?", "What is the name of {P} best friend?"],
      "who {P} best friend is", "best friend"),
    R("employer", lambda r: f"{made_up(r, SYLLABLES, 1)} {r.choice(INDUSTRIES)}",
      ["{S} [works|work] for {v}.", "{P} employer is {v}.", "{S} [is|am|are] employed by {v}."],
      ["Who [does|do] {S} work for?", "Which company [does|do] {S} work for?", "Who is {P} employer?",
       "Where [does|do] {S} work?"], "who {S} [works|work] for", "employer"),
    R("instrument", one_of(INSTRUMENTS),
      ["{S} [plays|play] the {v}.", "{P} instrument is the {v}.", "{S} [has|have] played the {v} for years."],
      ["What instrument [does|do] {S} play?", "Which instrument [does|do] {S} play?", "What [does|do] {S} play?"],
      "what instrument {S} [plays|play]", "instrument"),
    R("language", one_of(LANGUAGES),
      ["{S} [speaks|speak] {v}.", "{P} mother tongue is {v}.", "{S} [speaks|speak] {v} at home."],
      ["What language [does|do] {S} speak?", "Which language [does|do] {S} speak?", "What is {P} mother tongue?"],
      "what language {S} [speaks|speak]"),
    R("street", lambda r: f"{r.choice(STREET_NAMES)} {r.choice(STREET_KINDS)}",
      ["{S} [lives|live] on {v}.", "{P} house is on {v}.", "{P} address is on {v}."],
      ["What street [does|do] {S} live on?", "Which street [does|do] {S} live on?", "On which street is {P} house?"],
      "what street {S} [lives|live] on", "house"),
    R("children", one_of(COUNTS),
      ["{S} [has|have] {v}.", "{S} [is|am|are] the parent of {v}.", "{S} [has|have] raised {v}."],
      ["How many children [does|do] {S} have?", "How many kids [does|do] {S} have?",
       "[Does|Do] {S} have children?"], "how many children {S} [has|have]", "children"),
    R("hobby", one_of(HOBBIES, ","),
      ["{P} hobby is {v}.", "{S} [enjoys|enjoy] {v} in {H} free time.", "{S} [spends|spend] {H} weekends {v}."],
      ["What is {P} hobby?", "What [does|do] {S} do for fun?", "What [does|do] {S} do in {H} free time?"],
      "what {P} hobby is", "hobby"),
    R("allergy", one_of(ALLERGIES),
      ["{S} [is|am|are] allergic to {v}.", "{S} [has|have] an allergy to {v}.",
       "{S} cannot eat {v} because of an allergy."],
      ["What [is|am|are] {S} allergic to?", "What allergy [does|do] {S} have?", "What can't {S} eat?"],
      "what {S} [is|am|are] allergic to", "allergy"),
    R("birthday", one_of(MONTHS),
      ["{P} birthday is in {v}.", "{S} [celebrates|celebrate] {H} birthday in {v}.", "{S} [has|have] {H} birthday in {v}."],
      ["When is {P} birthday?", "In which month is {P} birthday?", "What month is {P} birthday in?"],
      "when {P} birthday is", "birthday"),
    R("phone", lambda r: f"{r.randint(200, 999)}-{r.randint(1000, 9999)}",
      ["{P} phone number is {v}.", "{S} can be reached at {v}.", "{v} is {P} phone number."],
      ["What is {P} phone number?", "What number can {S} be reached at?", "What is {P} number?"],
      "what {P} phone number is", "phone number"),
    R("school", lambda r: r.choice(["the University of {}", "{} College", "{} Academy"]).format(made_up(r, TOWN_ENDS)),
      ["{S} studied at {v}.", "{S} [is|am|are] a graduate of {v}.", "{S} went to {v}."],
      ["Where did {S} study?", "Which school did {S} go to?", "Where did {S} go to school?"], "where {S} studied"),
    R("garden", one_of(PLANTS),
      ["{S} [grows|grow] {v} in {H} garden.", "{P} garden is full of {v}."],
      ["What [does|do] {S} grow in {H} garden?", "What grows in {P} garden?", "What is in {P} garden?"],
      "what {S} [grows|grow] in {H} garden", "garden"),
    R("eyes", one_of(EYES, ","), ["{S} [has|have] {v} eyes.", "{P} eyes are {v}."],
      ["What colour are {P} eyes?", "What colour eyes [does|do] {S} have?"], "what colour {P} eyes are", "eyes"),
]


RELATIONS = {r.name: r for r in _RELATION_ROWS}
RELATION_NAMES = list(RELATIONS)
EXCLUDES = {"age": "birth_year", "birth_year": "age"}    # one person has one or the other, never both

# ---- people and sentences ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    name: str
    female: bool
    title: str = ""      # "neighbour": the user's neighbour, "my neighbour Alvar" to the user

    def called(self, speaker: str) -> str:
        if not self.title:
            return self.name
        return f"{'my' if speaker == 'user' else 'your'} {self.title} {self.name}"


USER = Person("", False, "the user")   # facts about the user: "my sister", "I live in ..."


def same_name(a: Person, b: Person) -> bool:
    """Could a question about one be about the other? ("Agnes" and "Agnes Dalberg" could.)"""
    return a == b or (a is not USER and b is not USER and a.name.split()[0] == b.name.split()[0])

CONJUGATION = re.compile(r"\[([^\]]*)\]")
_compiled: dict[tuple[str, int], str] = {}


def conjugated(template: str, person: int) -> str:
    """The template with each [third|other] or [third|first|second] resolved for person 1, 2 or 3."""
    key = (template, person)
    if key not in _compiled:
        def pick(m):
            forms = m.group(1).split("|")   # third, other or third, first, second
            return forms[0] if person == 3 else forms[person] if len(forms) == 3 else forms[1]
        _compiled[key] = CONJUGATION.sub(pick, template)
    return _compiled[key]


def render(template: str, who: Person, value: str, speaker: str, sentence: bool = True) -> str:
    """A template about `who` as `speaker` ("user" or "assistant") says it; a sentence starts with a capital."""
    if who is USER:
        person = 1 if speaker == "user" else 2
        S, P = ("I", "my") if person == 1 else ("you", "your")
        H = P
    else:
        person, S = 3, who.called(speaker)
        P, H = S + "'s", "her" if who.female else "his"
    text = conjugated(template, person).format(S=S, P=P, H=H, v=value, av=a_or_an(value))
    return text[:1].upper() + text[1:] if sentence else text


@dataclass(frozen=True)
class Fact:
    who: Person
    relation: Relation
    value: str

    def said(self, rng: random.Random, speaker: str, template: str | None = None) -> str:
        return render(template or rng.choice(self.relation.statements), self.who, self.value, speaker)

    def question(self, rng: random.Random) -> str:
        return render(rng.choice(self.relation.questions), self.who, self.value, "user")


def about(who: Person, speaker: str = "user") -> str:
    """Someone as the object of "Tell me about ...": "Alvar", "my neighbour Alvar", "me"."""
    return ("me" if speaker == "user" else "you") if who is USER else who.called(speaker)


def tell_me_about(rng: random.Random, who: Person) -> str:
    if who is USER:
        return rng.choice(["What do you know about me?", "Tell me what you know about me.", "What have I told you about myself?"])
    return rng.choice(["Tell me about {}.", "What do you know about {}?", "Who is {}?"]).format(about(who))


def topic_question(fact: Fact) -> str:
    """ "What do you know about X's boat?" """
    return render(f"What do you know about {{P}} {fact.relation.topic}?", fact.who, fact.value, "user")


def restate(rng: random.Random, facts: list[Fact]) -> str:
    return " ".join(f.said(rng, "assistant") for f in facts)


ACKS = ["Got it.", "Noted.", "Thanks, I'll remember that.", "OK, I'll remember that.", "Understood.", "Good to know.",
        "Thanks for telling me.", "All right, noted.", "I'll keep that in mind."]
ACK_PREFIXES = ["Noted: ", "Got it: ", "OK: ", "I'll remember that. "]


def acknowledge(rng: random.Random, facts: list[Fact]) -> str:
    if rng.random() < 0.7:
        return rng.choice(ACKS)
    text = restate(rng, facts)
    prefix = rng.choice(ACK_PREFIXES)
    if prefix.endswith(": ") and text.startswith(("Your ", "You ")):
        text = text[:1].lower() + text[1:]
    return prefix + text


def dont_know(rng: random.Random, fact: Fact, stranger: bool) -> str:
    """I don't know, about a fact never stated (about someone never mentioned at all, if `stranger`)."""
    clause = render(fact.relation.unknown, fact.who, fact.value, "assistant", sentence=False)
    forms = [f"I don't know {clause}.", "I don't know.", f"I don't know; you haven't told me {clause}.",
             "I don't know; you haven't told me that.", "I'm not sure, nobody told me that.",
             f"You haven't told me {clause}, so I don't know."]
    if stranger and fact.who is not USER:
        name = about(fact.who, "assistant")
        forms += [f"I don't know; you haven't told me about {name}.", f"I don't know who {name} is.",
                  f"I don't know anything about {name}."]
    return rng.choice(forms)


SMALL_TALK = [
    (["Hello!", "Hi.", "Hi there!", "Good morning.", "Hey.", "Good evening.", "Hello."],
     ["Hello! How can I help?", "Hi! What would you like to talk about?", "Hello. Tell me something, or ask me anything.",
      "Hi! How are you?"]),
    (["How are you?", "How are you doing?", "How's it going?"],
     ["I'm fine, thanks. How can I help?", "Very well, thank you. What can I do for you?", "I'm good, thanks for asking."]),
    (["Thanks!", "Thank you.", "Thanks a lot.", "Great, thanks."], ["You're welcome.", "Glad to help.", "Any time."]),
    (["Bye.", "Goodbye!", "See you later.", "Good night."], ["Goodbye!", "Bye! Talk to you soon.", "See you.", "Good night!"]),
    (["What can you do?", "How can you help me?", "What are you good for?"],
     ["I can talk with you and remember what you tell me: tell me something now and ask me about it later.",
      "I can chat, answer questions about what you have told me, and say so when I don't know.",
      "Tell me things and ask me about them; I learn from our conversations."]),
    (["Who are you?", "What are you?", "What is your name?"],
     ["I'm NimLLM, a small language model trained from scratch.", "My name is NimLLM.",
      "I'm NimLLM, a small language model that learns from our conversations."]),
]


def small_talk(rng: random.Random, goodbye: bool = True) -> list[tuple[str, str]]:
    said, replies = rng.choice(SMALL_TALK if goodbye else [t for t in SMALL_TALK if "Goodbye!" not in t[1]])
    return [("user", rng.choice(said)), ("assistant", rng.choice(replies))]


# ---- dialogues -----------------------------------------------------------------------------------------

@dataclass
class Dialogue:
    kind: str
    messages: list[tuple[str, str]]
    stated: list[Fact] = field(default_factory=list)     # facts the talk states
    asked: list[Fact] = field(default_factory=list)      # facts its questions are about, answered in turn
    not_known: list[Fact] = field(default_factory=list)  # what it is asked and says it does not know
    group: int | None = None                             # the world person it is about, if any

    def record(self) -> dict:
        return {"messages": [{"role": role, "content": text} for role, text in self.messages], "kind": self.kind}


class Generator:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.used_names: set[str] = set()

    def first_name(self) -> tuple[str, bool]:
        female = self.rng.random() < 0.5
        return self.rng.choice(FEMALE if female else MALE), female

    def new_person(self) -> Person:
        """Someone with a full name no other record of the corpus mentions."""
        while True:
            first, female = self.first_name()
            name = f"{first} {made_up(self.rng, SURNAME_ENDS)}"
            if name not in self.used_names:
                self.used_names.add(name)
                return Person(name, female)

    def someone(self) -> Person:
        """Whom a talk is about: the user, someone new, someone by first name only, or the user's neighbour."""
        x = self.rng.random()
        if x < 0.3:
            return USER
        if x < 0.6:
            return self.new_person()
        first, female = self.first_name()
        if x < 0.85:
            return Person(first, female)
        title = self.rng.choice([t for t, woman in TITLES.items() if woman in (None, female)])
        return Person(first, female, title)

    def facts_about(self, who: Person, k: int, avoid: set[str] = frozenset()) -> list[Fact]:
        names = [n for n in RELATION_NAMES if n not in avoid] if avoid else RELATION_NAMES
        chosen = []
        for name in self.rng.sample(names, k + 1):    # one spare, for a pair that excludes each other
            if len(chosen) < k and EXCLUDES.get(name) not in {f.relation.name for f in chosen}:
                chosen.append(Fact(who, RELATIONS[name], RELATIONS[name].value(self.rng)))
        return chosen

    def statements(self, facts: list[Fact]) -> list[tuple[str, str]]:
        """The facts told, one or two to a message, each acknowledged."""
        messages, i = [], 0
        while i < len(facts):
            n = 2 if i + 1 < len(facts) and facts[i].who == facts[i + 1].who and self.rng.random() < 0.4 else 1
            group = facts[i:i + n]
            messages += [("user", " ".join(f.said(self.rng, "user") for f in group)), ("assistant", acknowledge(self.rng, group))]
            i += n
        return messages

    def context(self) -> tuple[list[Fact], list[tuple[str, str]]]:
        """The first part of a talk: a few facts about one or two people, stated and acknowledged, in order."""
        rng = self.rng
        people = [self.someone() for _ in range(rng.choice([1, 1, 1, 2]))]
        if len(people) == 2 and same_name(people[0], people[1]):
            people.pop()
        facts = [f for who in people for f in self.facts_about(who, rng.choice([1, 1, 2, 2, 3]))]
        if rng.random() < 0.5:
            rng.shuffle(facts)
        messages = small_talk(rng, goodbye=False) if rng.random() < 0.15 else []
        messages += self.statements(facts)
        if rng.random() < 0.2:
            messages += small_talk(rng, goodbye=False)
        return facts, messages

    def ask(self, fact: Fact, facts: list[Fact]) -> tuple[str, str]:
        """A question about a stated fact, and the answer that restates it (or all that was said about
        the person, for "Tell me about X.")."""
        rng, x = self.rng, self.rng.random()
        if x < 0.1:
            return tell_me_about(rng, fact.who), restate(rng, [f for f in facts if f.who == fact.who])
        if x < 0.2 and fact.relation.topic:
            return topic_question(fact), fact.said(rng, "assistant")
        return fact.question(rng), fact.said(rng, "assistant")

    # the kinds of dialogue

    def tell(self) -> Dialogue:
        who = self.someone()
        facts = self.facts_about(who, self.rng.choice([1, 1, 2]))
        return Dialogue("tell", self.statements(facts), stated=facts)

    def recall(self) -> Dialogue:
        rng = self.rng
        facts, messages = self.context()
        asked = rng.sample(facts, min(len(facts), rng.choice([1, 1, 1, 2])))
        for fact in asked:
            question, answer = self.ask(fact, facts)
            messages += [("user", question), ("assistant", answer)]
        return Dialogue("recall", messages, stated=facts, asked=asked)

    def unknown_in_context(self) -> Dialogue:
        rng = self.rng
        facts, messages = self.context()
        known = {(f.who, f.relation.name) for f in facts}
        if rng.random() < 0.5:      # someone the talk is about, something not said about them
            who = rng.choice(facts).who
            stated = {f.relation.name for f in facts if f.who == who}
            missing = self.facts_about(who, 1, avoid=stated)[0]
            stranger = False
        else:                       # someone else
            people = {f.who for f in facts}
            who = next(p for p in iter(self.someone, None) if not any(same_name(p, q) for q in people))
            missing = self.facts_about(who, 1)[0]
            stranger = True
        assert (missing.who, missing.relation.name) not in known
        if rng.random() < 0.15 and stranger and who is not USER:
            question = tell_me_about(rng, who)
            answer = rng.choice([f"I don't know anything about {about(who, 'assistant')}.",
                                 f"I don't know; you haven't told me about {about(who, 'assistant')}.",
                                 "I don't know; you haven't told me about them."])
        else:
            question = rng.choice([missing.question(rng)] * 4 + [topic_question(missing)] * bool(missing.relation.topic))
            answer = dont_know(rng, missing, stranger)
        messages += [("user", question), ("assistant", answer)]
        asked = []
        if rng.random() < 0.3:      # and then one it does know
            fact = rng.choice(facts)
            q, a = self.ask(fact, facts)
            messages += [("user", q), ("assistant", a)]
            asked = [fact]
        return Dialogue("unknown_in_context", messages, stated=facts, asked=asked, not_known=[missing])

    def unknown(self) -> Dialogue:
        """A question, with nothing before it, about someone no record mentions."""
        rng = self.rng
        who = self.new_person()
        missing = self.facts_about(who, 1)[0]
        if rng.random() < 0.25:
            question = tell_me_about(rng, who)
            answer = rng.choice([f"I don't know anything about {who.name}.", f"I don't know who {who.name} is.",
                                 "I don't know; nobody has told me about them.", "I don't know."])
        else:
            question = rng.choice([missing.question(rng)] * 4 + [topic_question(missing)] * bool(missing.relation.topic))
            answer = dont_know(rng, missing, True)
        return Dialogue("unknown", [("user", question), ("assistant", answer)], not_known=[missing])

    def smalltalk(self) -> Dialogue:
        return Dialogue("smalltalk", [m for _ in range(self.rng.choice([1, 1, 2])) for m in small_talk(self.rng)])

    def world_person(self, group: int, questions: bool) -> tuple[list[Fact], list[Dialogue]]:
        """A person of the world: several facts, each stated in TELLS_PER_FACT records in different words,
        BIOGRAPHIES records that answer "Tell me about X." with all of them, and (if `questions`) a
        question about each fact alone, answered."""
        rng, who = self.rng, self.new_person()
        facts = self.facts_about(who, rng.randint(3, 5))
        mentions = []   # (fact, phrasing): a fact's tells use different phrasings
        for f in facts:
            mentions += [(f, t) for t in rng.sample(f.relation.statements, TELLS_PER_FACT)]
        rng.shuffle(mentions)
        records = []
        while mentions:
            group_of = [mentions.pop()]
            if mentions and rng.random() < 0.5 and mentions[-1][0] != group_of[0][0]:
                group_of.append(mentions.pop())
            told = [f for f, _ in group_of]
            messages = [("user", " ".join(f.said(rng, "user", t) for f, t in group_of)), ("assistant", acknowledge(rng, told))]
            records.append(Dialogue("tell", messages, stated=told, group=group))
        for _ in range(BIOGRAPHIES):
            order = rng.sample(facts, len(facts))
            records.append(Dialogue("known", [("user", tell_me_about(rng, who)), ("assistant", restate(rng, order))],
                                    asked=order, group=group))
        if questions:
            for f in facts:
                q = topic_question(f) if f.relation.topic and rng.random() < 0.15 else f.question(rng)
                records.append(Dialogue("known", [("user", q), ("assistant", f.said(rng, "assistant"))], asked=[f], group=group))
        return facts, records


@dataclass
class Corpus:
    dialogues: list[Dialogue]
    world: list[tuple[list[Fact], bool]]     # each world person's facts, and whether questions about them are trained


def build(n: int, seed: int = 0) -> Corpus:
    """n dialogues: the world's records spread out, the rest of the kinds at KIND_WEIGHTS among them."""
    g = Generator(seed)
    rng = g.rng
    world, keyed = [], []
    for i in range(n // PEOPLE_PER_WORLD_PERSON):
        facts, records = g.world_person(i, questions=i % 2 == 0)
        world.append((facts, i % 2 == 0))
        rng.shuffle(records)
        k, start = len(records), rng.random()
        # round r holds the r-th record of every person: spaced evenly over the file, a little jittered
        keyed += [((r + start + SPREAD_JITTER * (rng.random() - 0.5)) / k, d) for r, d in enumerate(records)]
    kinds, weights = list(KIND_WEIGHTS), list(KIND_WEIGHTS.values())
    for kind in rng.choices(kinds, weights, k=max(n - len(keyed), 0)):
        keyed.append((rng.random(), getattr(g, kind)()))
    keyed.sort(key=lambda kd: kd[0])
    return Corpus([d for _, d in keyed][:n], world)


def generate_dialogues(n: int, seed: int = 0) -> list[dict]:
    """n dialogues as JSONL records: {"messages": [{"role": ..., "content": ...}, ...], "kind": ...}."""
    return [d.record() for d in build(n, seed).dialogues]


def world_questions(n: int, seed: int = 0) -> list[dict]:
    """Every fact of the world of `build(n, seed)` as a question with its expected value, and whether the
    corpus asks it (the other half of the people were only told and described: held out, for measuring)."""
    rng = random.Random(seed + 1)
    return [{"question": f.question(rng), "answer": f.said(rng, "assistant"), "value": f.value, "trained": trained,
             "relation": f.relation.name, "name": f.who.name}
            for facts, trained in build(n, seed).world for f in facts]


def count_in(path: str | Path) -> int | None:
    """N of a corpus file that corpus_for wrote; None for any other file."""
    found = re.fullmatch(r"dialogues-(\d+)-seed\d+\.jsonl", Path(path).name)
    return int(found[1]) if found else None


def corpus_for(model_root: Path, n: int, seed: int = 0, log=print) -> Path:
    """The conversation-skill corpus of a model folder (`nimllm train`, --chat-skills N), made on first use."""
    return write_jsonl_once(Path(model_root) / "chat-skills" / f"dialogues-{n}-seed{seed}.jsonl",
                            lambda: generate_dialogues(n, seed), f"{n:,} conversation-skill dialogues", log)

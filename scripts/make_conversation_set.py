"""Generate tests/data/conversation_set.json: two people talking with the bot over days.

Reproducible (a fixed seed) from the facts and templates below, so the set is reviewed here
and not as 1,500 typed lines. Each conversation is one group chat with many sessions (days);
each turn is what the runtime stores as an episode: one person's message and the bot's reply,
who said it and when. The questions are honest about chat: the asker's words are often in the
turn before the answer, the names are those of the two speakers (each in half the turns), and
most turns are short.

    python scripts/make_conversation_set.py            # rewrite the file
    python scripts/make_conversation_set.py --check    # fail if the file is not what this makes
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "conversation_set.json"
SEED = 12

PAIRS = [
    ("Alice", "Bob"),
    ("Maya", "Tom"),
    ("Priya", "Lucas"),
    ("Nora", "Ken"),
    ("Elena", "Sam"),
    ("Rosa", "Ivan"),
]

# Asked by one speaker, answered by the other in the next turn: the question's words are in
# the asking turn, the answer in the next one. (ask, answer, question about the answerer,
# when it was said)
ASKED = [
    (
        "{b}, how long have you been married now?",
        "{n} years already!",
        "How long has {b} been married?",
        "When did {b} say how long they've been married?",
    ),
    (
        "{b}, where did you grow up?",
        "A small town near {city}, by the river.",
        "Where did {b} grow up?",
        "When did {b} talk about where they grew up?",
    ),
    (
        "what do you do for work these days, {b}?",
        "Still nursing, night shifts at the clinic.",
        "What is {b}'s job?",
        "When did {b} tell us about their work?",
    ),
    (
        "{b}, what's your dog called again?",
        "{pet}! She's a menace.",
        "What is the name of {b}'s dog?",
        "When did {b} mention their dog's name?",
    ),
    (
        "how old is your daughter now {b}?",
        "She turned {n} last week.",
        "How old is {b}'s daughter?",
        "When did {b} say how old their daughter is?",
    ),
    (
        "{b} what's your favourite dish?",
        "My mum's {food}, no contest.",
        "What is {b}'s favourite food?",
        "When did {b} tell us their favourite dish?",
    ),
    (
        "{b}, which team do you support?",
        "{team}, since I was a kid.",
        "Which team does {b} support?",
        "When did {b} say which team they support?",
    ),
    (
        "what car did you end up buying {b}?",
        "A used {car}, blue.",
        "Which car did {b} buy?",
        "When did {b} say which car they bought?",
    ),
    (
        "{b} what are you reading at the moment?",
        "'{book}', slow going.",
        "What book is {b} reading?",
        "When did {b} say what they're reading?",
    ),
    (
        "{b}, how did the marathon go?",
        "Finished in {hours} hours, legs are dead.",
        "How long did {b} take to run the marathon?",
        "When did {b} tell us how the marathon went?",
    ),
    (
        "{b} where are you going on holiday?",
        "{city} in two weeks!",
        "Where is {b} going on holiday?",
        "When did {b} say where they're going on holiday?",
    ),
    (
        "{b}, what instrument do you play?",
        "The {instrument}, badly.",
        "Which instrument does {b} play?",
        "When did {b} say which instrument they play?",
    ),
    (
        "{b}, when is your birthday?",
        "The {n}th of {month}.",
        "When is {b}'s birthday?",
        "When did {b} tell us their birthday?",
    ),
    (
        "{b}, what are you allergic to again?",
        "{allergen}, so no pesto for me.",
        "What is {b} allergic to?",
        "When did {b} mention their allergy?",
    ),
    (
        "{b}, what's your sister's name?",
        "{sister}. She's the loud one.",
        "What is the name of {b}'s sister?",
        "When did {b} tell us their sister's name?",
    ),
]

# Both speakers say the same kind of thing: only who said it tells the turns apart.
# (statement, question about the speaker, what it is about)
BOTH = [
    (
        "I started learning the {instrument} this month",
        "What instrument did {a} start learning?",
        "the instrument they're learning",
    ),
    (
        "I'm thinking of painting the kitchen {colour}",
        "Which colour does {a} want for the kitchen?",
        "the kitchen colour",
    ),
    ("my favourite film is {film}", "What is {a}'s favourite film?", "their favourite film"),
    (
        "I'm training for a {distance} race",
        "What race is {a} training for?",
        "the race they're training for",
    ),
    (
        "I've been cooking a lot of {food} lately",
        "What has {a} been cooking lately?",
        "what they're cooking",
    ),
    (
        "I signed up for a {hobby} class",
        "What class did {a} sign up for?",
        "the class they signed up for",
    ),
    ("my new phone is a {phone}", "What phone does {a} have?", "their phone"),
    (
        "I want to visit {city} next year",
        "Which city does {a} want to visit next year?",
        "the city they want to visit",
    ),
]

# One turn, one fact, the bot's reply repeats the gist. (statement, reply, question)
SAID = [
    (
        "we adopted a kitten, we called her {pet}",
        "Welcome {pet}! Kittens are chaos.",
        "What is the name of {a}'s kitten?",
    ),
    ("got the job at {company}!!", "Congratulations on {company}!", "Where did {a} get a job?"),
    ("my knee surgery is booked", "Fingers crossed it goes well.", "When is {a}'s knee surgery?"),
    ("we're moving to {city} in the autumn", "Big move! {city} is lovely.", "Where is {a} moving?"),
    ("I broke my wrist skateboarding", "Ouch, rest it properly.", "How did {a} break a wrist?"),
    ("the boiler died again", "Winter timing, as always.", "What broke at {a}'s place?"),
    ("I'm going vegetarian for a month", "Good luck with it.", "What diet is {a} trying?"),
    (
        "my parents are visiting on {weekday}",
        "Nice, enjoy the visit.",
        "When are {a}'s parents visiting?",
    ),
]

# Two turns on different days: a name introduced, then something about it. (first, second,
# question that needs both)
CHAINED = [
    (
        "my sister {sister} just had a baby",
        "{sister} sent photos from {city}, the baby is huge",
        "Where does {a}'s sister live?",
    ),
    (
        "I'm reading a book by {author}",
        "{author} has a new talk in {city}",
        "Where is the author {a} is reading giving a talk?",
    ),
    (
        "the restaurant I love is called {restaurant}",
        "{restaurant} closed for renovation until {month}",
        "Until when is {a}'s favourite restaurant closed?",
    ),
    (
        "my colleague {colleague} is leaving",
        "{colleague} is joining {company} next month",
        "Which company is {a}'s colleague joining?",
    ),
]

CHATTER_USER = [
    "haha",
    "ok",
    "good morning!",
    "how's everyone?",
    "lol true",
    "same here",
    "yes please",
    "not today",
    "I'm so tired",
    "brb",
    "back",
    "what a day",
    "see you tomorrow",
    "night all",
    "coffee time",
    "did you see the news?",
    "it's raining again",
    "thanks!",
    "sounds good",
    "I'll think about it",
    "anyone around?",
    "that's funny",
    "no idea",
    "maybe later",
    "what are you up to?",
    "long week",
    "omg",
    "nice one",
    "fair enough",
    "ok let's do that",
]
CHATTER_BOT = [
    "Ha!",
    "Noted.",
    "Good morning!",
    "Sounds good.",
    "Take care.",
    "Anytime.",
    "Sure.",
    "I'm here.",
    "Glad to hear it.",
    "Hope you rest well.",
    "Talk tomorrow.",
    "Got it.",
]

VALUES = {
    "n": [str(n) for n in range(3, 19)],
    "hours": ["3.5", "4", "4.5", "5"],
    "city": [
        "Porto",
        "Kyoto",
        "Oslo",
        "Lima",
        "Tbilisi",
        "Quebec",
        "Naples",
        "Cork",
        "Hanoi",
        "Tallinn",
    ],
    "pet": ["Biscuit", "Pepper", "Mochi", "Olive", "Juniper", "Pickle", "Luna", "Waffles"],
    "food": ["lasagne", "dal", "paella", "pierogi", "ramen", "moussaka", "tagine", "gumbo"],
    "team": ["Celtic", "Benfica", "Ajax", "Napoli", "Boca Juniors"],
    "car": ["Skoda Octavia", "Honda Jazz", "Volvo V70", "Fiat Panda", "Toyota Yaris"],
    "book": ["Middlemarch", "Dune", "The Overstory", "Pachinko", "Stoner", "Piranesi"],
    "instrument": ["cello", "banjo", "trumpet", "ukulele", "oboe", "harp", "drums", "accordion"],
    "month": ["January", "April", "June", "August", "October", "December"],
    "allergen": ["pine nuts", "shellfish", "kiwi", "sesame"],
    "sister": ["Ines", "Greta", "Zoe", "Farah", "Lotte", "Mira"],
    "colour": ["sage green", "terracotta", "navy", "mustard", "off-white"],
    "film": ["Spirited Away", "Jaws", "Amelie", "Heat", "Paddington 2", "Alien"],
    "distance": ["10k", "half-marathon", "5k", "trail", "triathlon"],
    "hobby": ["pottery", "salsa", "climbing", "life drawing", "woodwork", "improv"],
    "phone": ["Pixel", "iPhone", "Fairphone", "Nokia"],
    "company": ["Figment", "Northwind", "Halcyon", "Brightline", "Copperleaf"],
    "weekday": ["Monday", "Tuesday", "Thursday", "Saturday"],
    "author": ["Ishiguro", "Le Guin", "Ferrante", "Murakami", "Atwood"],
    "restaurant": ["Casa Nova", "The Lamplight", "Umami House", "Bistro Verde"],
    "colleague": ["Jonas", "Ruth", "Dev", "Hana", "Marco"],
}

DAYS = 14
START = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


def _fill(template: str, slots: dict[str, str]) -> str:
    text = template.format(**slots)
    return text[0].upper() + text[1:] if text[0].islower() and template[0] == "{" else text


def _date(at: dt.datetime) -> str:
    return f"{at.day} {at.strftime('%B')}"


def build() -> dict[str, object]:
    rng = random.Random(SEED)
    questions: list[dict[str, object]] = []
    conversations = [
        _conversation(rng, number, one, other, questions)
        for number, (one, other) in enumerate(PAIRS, start=1)
    ]
    return {
        "about": (
            "Multi-session group chats of two people with the bot, generated by "
            "scripts/make_conversation_set.py (do not edit by hand). Each turn is one episode "
            "(a person's message and the bot's reply); a question's evidence is the turns that "
            "answer it."
        ),
        "conversations": conversations,
        "questions": questions,
    }


def _conversation(
    rng: random.Random, number: int, one: str, other: str, questions: list[dict[str, object]]
) -> dict[str, object]:
    """One chat's turns; its questions are added to `questions`."""
    chat = f"chat-{number}"
    turns: list[dict[str, object]] = []
    # Which facts this chat holds, spread over its days.
    events: list[tuple[str, object]] = []
    for template in rng.sample(ASKED, 12):
        events.append(("asked", template))
    for template in rng.sample(BOTH, 5):
        events.append(("both", template))
    for template in rng.sample(SAID, 6):
        events.append(("said", template))
    for template in rng.sample(CHAINED, 4):
        events.append(("chained", template))
    rng.shuffle(events)
    per_day: list[list[tuple[str, object]]] = [[] for _ in range(DAYS)]
    for n, event in enumerate(events):
        per_day[n % DAYS].append(event)
    pending: list[tuple[int, dict[str, str], str, str, str]] = []  # chained second halves
    day_at = START + dt.timedelta(days=number - 1)

    def add(speaker: str, user: str, reply: str, at: dt.datetime) -> str:
        key = f"{chat}.t{len(turns) + 1}"
        turns.append(
            {"key": key, "speaker": speaker, "at": at.isoformat(), "user": user, "reply": reply}
        )
        return key

    for day in range(DAYS):
        at = day_at + dt.timedelta(days=day * 2 + rng.randint(0, 1), minutes=rng.randint(0, 600))

        def tick() -> dt.datetime:
            nonlocal at
            at += dt.timedelta(minutes=rng.randint(1, 9))
            return at

        def chatter() -> None:
            for _ in range(rng.randint(1, 3)):
                add(
                    rng.choice((one, other)),
                    rng.choice(CHATTER_USER),
                    rng.choice(CHATTER_BOT),
                    tick(),
                )

        chatter()

        def follow_up() -> None:
            first_key, slots, second, question, speaker = pending.pop(0)
            second_key = add(speaker, second.format(**slots), "Good to know.", tick())
            questions.append(
                {
                    "question": question.format(**slots),
                    "type": "multi-hop",
                    "evidence": [first_key, second_key],
                }
            )
            chatter()

        if pending and day % 2 == 1:
            follow_up()
        for kind, template in per_day[day]:
            a, b = (one, other) if rng.random() < 0.5 else (other, one)
            slots = {key: rng.choice(values) for key, values in VALUES.items()}
            slots.update(a=a, b=b)
            if kind == "asked":
                ask, answer, question, when = template  # type: ignore[misc]
                add(
                    a,
                    _fill(ask, slots),
                    rng.choice(("Over to you, " + b + ".", "Good question!")),
                    tick(),
                )
                key = add(b, _fill(answer, slots), rng.choice(CHATTER_BOT), tick())
                questions.append(
                    {
                        "question": question.format(**slots),
                        "type": "single-hop",
                        "evidence": [key],
                    }
                )
                questions.append(
                    {
                        "question": when.format(**slots),
                        "type": "temporal",
                        "evidence": [key],
                        "date": _date(at),
                    }
                )
            elif kind == "both":
                statement, question, about = template  # type: ignore[misc]
                other_slots = {key: rng.choice(values) for key, values in VALUES.items()}
                mine = add(a, _fill(statement, slots), rng.choice(CHATTER_BOT), tick())
                chatter()
                theirs = add(
                    b,
                    "me too! " + statement.format(**other_slots).replace("I ", "I ", 1),
                    rng.choice(CHATTER_BOT),
                    tick(),
                )
                questions.append(
                    {"question": question.format(a=a), "type": "single-hop", "evidence": [mine]}
                )
                questions.append(
                    {
                        "question": question.format(a=b),
                        "type": "single-hop",
                        "evidence": [theirs],
                    }
                )
                questions.append(
                    {
                        "question": f"What did {a} and {b} each say about {about}?",
                        "type": "multi-hop",
                        "evidence": [mine, theirs],
                    }
                )
            elif kind == "said":
                statement, reply, question = template  # type: ignore[misc]
                key = add(a, _fill(statement, slots), reply.format(**slots), tick())
                questions.append(
                    {
                        "question": question.format(**slots),
                        "type": "single-hop",
                        "evidence": [key],
                    }
                )
                topic = (
                    _fill(statement, slots)
                    .split(",")[0]
                    .replace("my ", a + "'s ")
                    .replace("I'm", a + " is")
                    .replace("we're", a + " is")
                    .replace("I ", a + " ")
                    .replace("we ", a + " ")
                )
                questions.append(
                    {
                        "question": f"What did {a} say on {_date(at)}?",
                        "type": "temporal",
                        "evidence": [key],
                        "date": _date(at),
                    }
                )
                questions.append(
                    {
                        "question": f"When did we hear that {topic.strip('!')}?",
                        "type": "temporal",
                        "evidence": [key],
                        "date": _date(at),
                    }
                )
            else:
                first, second, question = template  # type: ignore[misc]
                key = add(a, _fill(first, slots), rng.choice(CHATTER_BOT), tick())
                pending.append((key, slots, second, question, b))
            chatter()
        while day == DAYS - 1 and pending:
            follow_up()
    return {"key": chat, "people": [one, other], "turns": turns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = json.dumps(build(), indent=1, ensure_ascii=False) + "\n"
    if args.check:
        if OUT.read_text(encoding="utf-8") != text:
            sys.exit(f"{OUT} is not what {Path(__file__).name} makes: run it")
        return
    OUT.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()

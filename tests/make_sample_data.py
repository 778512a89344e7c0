"""Write the synthetic sample in ``p2bot_utils/sample_data/`` (made-up personas and dialogues, NOT from
PERSONA-CHAT): 10 personas x 3 episodes of 5-8 turns in ParlAI text format (both/self x original/revised,
no candidates) and a small ``train_persona_clusters.json`` of 10 other personas.

Run ``python tests/make_sample_data.py`` to regenerate; the output is deterministic.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "p2bot_utils" / "sample_data"

# persona sentence, its revised paraphrase, two things the speaker says about it
PERSONAS = [
    [("i love hiking in the mountains.", "climbing trails up high peaks is my passion.",
      "i spent last weekend hiking up a mountain trail .", "the mountains are my favorite place to hike ."),
     ("i have two dogs.", "i share my home with a pair of pups.",
      "my two dogs come with me everywhere .", "i just got back from walking my two dogs ."),
     ("i work as a nurse.", "my job is caring for patients in a hospital.",
      "i work long shifts as a nurse at the hospital .", "being a nurse is tiring but i love helping people ."),
     ("my favorite food is tacos.", "nothing beats a plate of mexican street food.",
      "i could eat tacos every single day .", "i am making tacos for dinner tonight ."),
     ("i grew up on a farm.", "my childhood was spent around cows and crops.",
      "i grew up on a farm so i wake up early .", "my parents still run the farm where i grew up .")],
    [("i play the guitar in a band.", "music is my life and i strum six strings with friends.",
      "my band has a show on friday , i play guitar .", "i practice guitar with my band every night ."),
     ("i am a vegetarian.", "meat never ends up on my plate.",
      "i do not eat meat , i am a vegetarian .", "i cooked a veggie curry since i am vegetarian ."),
     ("i live in a big city.", "my apartment is downtown in a busy metropolis.",
      "the city is loud but i love living here .", "i take the subway everywhere in the city ."),
     ("my sister is my best friend.", "i am closest to my sibling.",
      "my sister and i talk every day .", "i am visiting my sister , she is my best friend ."),
     ("i drink too much coffee.", "i need several cups of espresso a day.",
      "i am on my fourth cup of coffee today .", "coffee keeps me going , i drink way too much .")],
    [("i teach third grade.", "i educate eight year olds at an elementary school.",
      "i teach third grade , the kids are so funny .", "i am grading spelling tests for my third graders ."),
     ("i have three cats.", "three felines rule my house.",
      "my three cats are sleeping on my lap .", "i have three cats and they are spoiled ."),
     ("i bake oatmeal cookies every sunday.", "making sweet treats in the oven is my hobby.",
      "i baked chocolate chip cookies this morning .", "baking cookies is how i relax ."),
     ("i read mystery novels.", "detective stories are what i read.",
      "i just finished a great mystery novel .", "i love guessing the killer in mystery books ."),
     ("i am afraid of heights.", "tall places terrify me.",
      "i could never climb that , i am scared of heights .", "heights make me so nervous .")],
    [("i am a software engineer.", "i write code for a living.",
      "i write software for a tech company .", "work was long , i was fixing bugs in our code ."),
     ("i play video games every night.", "gaming is how i spend my evenings.",
      "i play video games after work every night .", "i stayed up late playing a new video game ."),
     ("i have never left my home state.", "i have not traveled outside the state i was born in.",
      "i have never even left my home state .", "i would love to travel , i have never left my state ."),
     ("i like spicy food.", "the hotter the dish the better for me.",
      "the spicier the food the better .", "i put hot sauce on everything ."),
     ("i have a pet snake.", "a python lives in a tank in my room.",
      "my pet snake is named noodle .", "i feed my snake once a week .")],
    [("i run marathons.", "long distance running races are my thing.",
      "i am training for my next marathon .", "i ran twenty miles this morning for marathon training ."),
     ("i am a personal trainer.", "i help people get fit at a gym.",
      "i work at a gym as a personal trainer .", "my clients at the gym keep me busy ."),
     ("i eat a lot of protein.", "chicken and eggs are most of my diet.",
      "i eat eggs and chicken at every meal .", "protein shakes are my breakfast ."),
     ("i have a twin brother.", "i was born alongside a brother who looks just like me.",
      "my twin brother and i look exactly alike .", "people always mix me up with my twin brother ."),
     ("i love the beach.", "sand and waves make me happy.",
      "i go to the beach every weekend .", "the beach is my favorite place to be .")],
    [("i paint with watercolors.", "i make art with paints and water.",
      "i spent the day painting with watercolors .", "watercolor painting is my favorite hobby ."),
     ("i work at a coffee shop.", "i am a barista.",
      "i make lattes all day at the coffee shop .", "i just got off my shift at the coffee shop ."),
     ("i am saving money to travel to japan.", "my dream is a trip to tokyo.",
      "i am saving up for a trip to japan .", "i really want to see japan one day ."),
     ("i have blue hair.", "i dyed my hair the color of the sky.",
      "i just dyed my hair bright blue .", "my blue hair gets a lot of looks ."),
     ("i love old movies.", "classic films are my favorite.",
      "i love watching old black and white movies .", "classic movies are better than new ones .")],
    [("i am retired.", "i stopped working when i turned sixty five.",
      "i am retired now so i have lots of free time .", "since i retired i finally have time for myself ."),
     ("i have five grandchildren.", "my kids gave me five grandkids.",
      "my five grandchildren visit me on sundays .", "i love spoiling my five grandkids ."),
     ("i like to garden.", "growing flowers and vegetables is my pastime.",
      "i grow tomatoes in my garden .", "i spent the morning in my garden ."),
     ("i used to be a mail carrier.", "i delivered letters for thirty years.",
      "i delivered mail for thirty years before i retired .", "as a mail carrier i walked miles every day ."),
     ("i do crossword puzzles.", "word puzzles keep my mind sharp.",
      "i do the crossword in the paper every morning .", "crossword puzzles keep my brain sharp .")],
    [("i am a college student.", "i attend university.",
      "i am a student at the state college .", "college classes are keeping me busy ."),
     ("i study biology.", "my major is the science of living things.",
      "i study biology and want to be a doctor .", "i have a big biology exam tomorrow ."),
     ("i work part time at a library.", "i shelve books a few hours a week.",
      "i work at the library on weekends .", "my part time job at the library is quiet ."),
     ("i play soccer.", "i am on a team that kicks a round ball.",
      "i play soccer on the college team .", "we won our soccer game yesterday ."),
     ("i have a fear of spiders.", "spiders scare me to death.",
      "i saw a spider and screamed , i hate spiders .", "spiders are the worst , they terrify me .")],
    [("i am a chef at an italian restaurant.", "i cook pasta for a living.",
      "i am a chef at an italian place downtown .", "i made fresh pasta at the restaurant today ."),
     ("i have a daughter.", "i am the parent of a little girl.",
      "my daughter just started kindergarten .", "my daughter loves helping me cook ."),
     ("i like to fish.", "i spend weekends catching fish at the lake.",
      "i go fishing at the lake on my days off .", "i caught a huge bass last weekend ."),
     ("i drive an old truck.", "my vehicle is a rusty pickup.",
      "my old truck still runs great .", "i have driven the same old truck for years ."),
     ("i sing along to old country records.", "songs about cowboys are my favorite.",
      "country music is always on in my truck .", "i am going to a country concert soon .")],
    [("i have been to twenty countries.", "i have traveled all over the world.",
      "i have visited twenty countries so far .", "my last trip was to my twentieth country ."),
     ("i speak three languages.", "i am fluent in english, spanish and french.",
      "i speak english , spanish and french .", "learning languages is easy for me , i speak three ."),
     ("i work as a pilot.", "i fly planes for an airline.",
      "i am a pilot , so i fly all over .", "i just landed a flight from madrid ."),
     ("i do not like cold weather.", "winter is my least favorite season.",
      "i hate the cold , give me summer .", "it is freezing here and i do not like it ."),
     ("i collect postcards.", "i keep cards from every place i visit.",
      "i collect postcards from every city i visit .", "my postcard collection fills a whole box .")],
]
# the persona pool's "training" personas (cluster file format: lowercase, no final period)
CLUSTERS = [
    ["i like to go camping", "i drive a red car", "my mother is a doctor", "i enjoy jazz music", "i am allergic to peanuts"],
    ["i am a lawyer", "i have a parrot", "i love sushi", "i go to the gym daily", "my favorite color is green"],
    ["i build furniture", "i have four brothers", "i like rainy days", "i watch basketball", "i drink green tea"],
    ["i am a firefighter", "i love roller coasters", "i have a pet turtle", "i sing in a choir", "i hate onions"],
    ["i knit sweaters", "i live by the sea", "i have a son in the navy", "i love bird watching", "i bake bread"],
    ["i am a dentist", "i ride a motorcycle", "i love horror movies", "i grow roses", "i have a cat named max"],
    ["i write poetry", "i work night shifts", "i love pizza", "i have never seen snow", "i play chess online"],
    ["i am an accountant", "i love dancing salsa", "i have two sons", "i collect coins", "i drink iced tea"],
    ["i am a mechanic", "i fix old cars", "i have a beard", "i love camping in the desert", "i listen to rock music"],
    ["i am a photographer", "i love sunsets", "i have a small apartment", "i eat cereal for dinner", "i ride my bike to work"],
]
REACT = ["that sounds fun .", "oh wow , really ?", "nice !", "cool .", "that is interesting .", "i see .",
         "awesome !", "haha , that is great ."]
ASK = ["what about you ?", "what do you do for fun ?", "what do you do for work ?", "tell me about yourself .",
       "anything fun planned this week ?"]
GREET = ["hi , how are you today ?", "hello ! how is your day going ?", "hey there , what are you up to ?"]


def statements(persona: list[tuple], keep: list[int], rng: random.Random) -> list[str]:
    """What a speaker says about its kept persona sentences: first statements, then second ones, shuffled."""
    first, second = [persona[i][2] for i in keep], [persona[i][3] for i in keep]
    rng.shuffle(first)
    rng.shuffle(second)
    return first + second


def dialogue(own: list[str], partner: list[str], n_turns: int, silence: bool, rng: random.Random) -> list[tuple]:
    turns = []
    for t in range(n_turns):
        if t == 0:
            turns.append(("__SILENCE__" if silence else rng.choice(GREET),
                          ("hi ! " if silence else "i am good . ") + own[0] + " " + rng.choice(ASK)))
            continue
        said = rng.choice(REACT) + " " + partner[(t - 1) % len(partner)]
        turns.append((said + (" " + rng.choice(ASK) if t % 2 else ""), rng.choice(REACT) + " " + own[t]))
    return turns


def episodes(rng: random.Random) -> list[dict]:
    """10 personas x 3 episodes; variant v drops persona sentence 5 - v (so variants share >= 3 sentences)."""
    out = []
    for g, persona in enumerate(PERSONAS):
        for v in range(3):
            keep = [i for i in range(5) if v == 0 or i != 5 - v]
            h = (g + 3 + v) % len(PERSONAS)
            own_order, partner_order = rng.sample(keep, len(keep)), rng.sample(range(5), 5)
            turns = dialogue(statements(persona, keep, rng), statements(PERSONAS[h], list(range(5)), rng),
                             5 + (3 * g + v) % 4, (g + v) % 4 == 0, rng)
            out.append({"own": [persona[i] for i in own_order], "partner": [PERSONAS[h][i] for i in partner_order],
                        "turns": turns})
    return out


def parlai_text(eps: list[dict], both: bool, revised: bool) -> str:
    lines = []
    for e in eps:
        persona = [f"your persona: {p[1 if revised else 0]}" for p in e["own"]]
        if both:
            persona += [f"partner's persona: {p[1 if revised else 0]}" for p in e["partner"]]
        body = persona + [f"{a}\t{b}" for a, b in e["turns"]]
        lines += [f"{n} {text}" for n, text in enumerate(body, 1)]
    return "\n".join(lines) + "\n"


def main() -> None:
    eps = episodes(random.Random(0))
    OUT.mkdir(parents=True, exist_ok=True)
    for both in (True, False):
        for revised in (False, True):
            name = f"valid_{'both' if both else 'self'}_{'revised' if revised else 'original'}_no_cands.txt"
            (OUT / name).write_text(parlai_text(eps, both, revised), encoding="utf-8")
    clusters = {str(100 + c): [s, [x for i, x in enumerate(s) if i != 4]] for c, s in enumerate(CLUSTERS)}
    (OUT / "train_persona_clusters.json").write_text(json.dumps(clusters, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

"""The paper's own examples (Tables 1, 3, 4, 5 of arXiv 2512.10551), as the simulator sees them.

They are the fixed points the click model is checked against: the User-LLM clicked the coffee
cup of Table 1; Table 3's vitamin B12 should beat the sofa for a soup question; Table 4's ads in
the flow should beat one appended below the conclusion. Table 1's feedback JSON is also the
demonstration in the User-LLM prompt. Only Table 1 gives a profile; the others get a plausible
one here (marked as ours).

:func:`world_questions` adds questions of the synthetic world's templates with the catalog ads
of their interest and the others: what the calibration test and ``bench/judge.py`` build
answers from.
"""

from __future__ import annotations

from llm_auction.schemas import UserProfile

TABLE1_PROFILE = UserProfile(
    user_id="paper-t1", info="A young male white-collar worker.", interests=["yoga", "coffee", "LEGO building sets", "reading"]
)
TABLE1_QUERY = "Are there any beginner-friendly homemade coffee recipes that pair well with post-yoga relaxation?"
TABLE1_ANSWER = (
    "For a relaxing post-yoga moment, a gentle and nuanced homemade coffee is an excellent choice. "
    "Try this simple yet delicious oat milk latte recipe:\n\n"
    "- Ingredients: 1 shot (about 30 ml) espresso, 150 ml oat milk (store-bought oat milk works fine), "
    "a pinch of cinnamon (optional), a pinch of cocoa powder (optional).\n"
    "- Instructions: Brew one shot of espresso using an espresso machine or Moka pot. Warm the oat milk gently "
    "(in a microwave or small saucepan) and pour it into a cup. Add the espresso and stir well. Finish with a "
    "dusting of cinnamon or cocoa powder to taste.\n\n"
    "This coffee is not only delicious but also adds warmth and comfort to your post-yoga moments. For a richer "
    "flavor, try adding some vanilla syrup or coconut milk. The [@Dutch-imported Oriental Floral Coffee Cup@ \\[Ad-4820\\]](#) "
    "is the perfect companion for this coffee\u2014its elegant design elevates the entire coffee experience with a "
    "sense of ritual and sophistication."
)
TABLE1_FEEDBACK = (
    '[{"ad_id": "Ad-4820", "clicked": true, "reason": "The ad is relevant to the query; the recommended coffee cup '
    'suits the oat milk latte and aligns naturally with the post-yoga relaxation context."}]'
)

# Ours: the paper gives no profile for Tables 3-5.
FAMILY_PROFILE = UserProfile(
    user_id="paper-t3", info="A 40-year-old mother living in Shanghai with her elderly parents and two young children.",
    interests=["home cooking", "family outings", "health"],
)
TABLE3_QUERY = (
    "How to make nutritious and easy-to-digest health soup with affordable ingredients for the elderly and children "
    "in autumn and winter?"
)
_TABLE3_BODY = (
    "During the autumn and winter seasons, the digestive systems of the elderly and children tend to be more sensitive. "
    "Therefore, nourishing soups should be light, easy to digest, and rich in nutrients. Here are some affordable yet "
    "nutritious and gentle soup recommendations:\n\n"
    "1. Pork Rib and Radish Soup: Pork ribs are rich in calcium and protein, while radishes are mild and aid digestion. "
    "Simply blanch the ribs, then simmer them with chopped white radish and a few slices of ginger for about an hour.\n"
    "2. Yam and Millet Porridge: Yam strengthens the spleen and stomach, while millet soothes digestion. Peel and cube "
    "the yam, then cook it with millet until soft.\n"
    "3. Cabbage and Tofu Soup: Cabbage is rich in vitamin C, while tofu is rich in plant protein. Slice the cabbage, "
    "cut the tofu into cubes, add a little salt and ginger slices, and bring to a boil.\n\n"
    "These soups are inexpensive and easy to prepare, and meet the nutritional needs of the autumn and winter seasons. "
    "A small amount of goji berries or red dates can be added, though excessive amounts should be avoided to prevent "
    "digestive discomfort. "
)
TABLE3_PRETRAINED = _TABLE3_BODY + (
    "[@Parsmenn Minimalist Cloud Sofa@\\[Ad-9420\\]](#) Though unrelated to food, if your family includes elderly or "
    "children who enjoy a cozy home environment, this sofa can enhance overall living comfort, making wellness moments "
    "even more relaxing."
)
TABLE3_AUCTION = _TABLE3_BODY + (
    "[@Staid Vitamin B12@\\[Ad-6542\\]](#)\u2014Vitamin B12 helps improve nervous system function, supporting mental "
    "clarity and appetite in both the elderly and children. Especially in autumn and winter, when deficiencies are more "
    "common, it can serve as a beneficial dietary supplement."
)

TABLE4_QUERY = "What are some safe and nature-rich outdoor camping or hiking routes near Shanghai suitable for families on weekends?"
TABLE4_PRETRAINED = (
    "There are many outdoor camping and hiking routes near Shanghai that are perfect for family weekends, offering both "
    "natural scenery and a safe, engaging experience for children. Here are some recommended options:\n\n"
    "1. Jinshan Coastal Camping Park. About an hour's drive from downtown Shanghai, this park features open beaches, "
    "wetlands, and forests, making it an ideal spot for family camping. The park offers tent rentals and a children's "
    "activity area. Kids can enjoy sand sculpting, shell collecting, and birdwatching.\n"
    "2. Hiking Trail at Sheshan National Forest Park (Songjiang). Sheshan has gentle terrain and clearly marked trails, "
    "including kid-friendly paths and observation decks. The route is lined with pine trees, maples, and wildflowers.\n"
    "3. Water Town Hiking Routes Around Zhujiajiao Ancient Town (Qingpu). The area features historic bridges, small "
    "rivers, and pavilions, making it great for family biking or walking along the river trails.\n\n"
    "All these routes prioritize safety and interactivity. It's recommended to book campsites or tickets in advance. "
    "Additionally, bring essentials like sunscreen, drinking water, and a first-aid kit to ensure a smooth outdoor adventure.\n\n"
    "@FILA Kids Basketball Shoes@[Ad-7633] are a practical choice for family outings, providing comfort and anti-slip "
    "designs suitable for wet forest trails or grassy areas."
)
TABLE4_AUCTION = (
    "Here are some family-friendly weekend camping and hiking routes around Shanghai that balance safety and nature "
    "immersion:\n\n"
    "1. Zhujiajiao Wetland Hiking (Qingpu District). The wild wetland park offers gentle hiking trails with clear waters "
    "and reed marshes, with viewing platforms and non-slip walkways. Parents and kids can collect fallen leaves and "
    "observe insects. @Fila Kids' Sports Shoes@[Ad-4064]\u2014For outdoor activities, slip-resistant, comfortable, and "
    "durable shoes are essential for children. These shoes feature anti-slip designs suitable for wet surfaces and hiking.\n"
    "2. Sheshan National Forest Park Camping Area. Sheshan boasts lush vegetation and is a popular camping spot. The "
    "camping zone includes a secured children's tent area and first aid stations. Clear weekends are ideal for "
    "stargazing. @Sanag Clip-on Bluetooth Earphones@[Ad-7444]\u2014During outdoor camping, these bone-conduction "
    "earphones sit comfortably outside the ears, ensuring safety while enhancing the forest experience with clear audio.\n"
    "3. Jinshan Langxia Ecological Park Hiking Trail. This park features open forest trails, meandering streams, and "
    "abundant native flora and birds. With flat paths and rest areas, it suits kids aged 3 and up.\n\n"
    "A warm and practical insulated water bottle is recommended during camping to avoid discomfort from cold drinks."
)

ELDER_PROFILE = UserProfile(
    user_id="paper-t5", info="A 55-year-old woman, recently retired, living in Hangzhou.", interests=["herbal tea", "gardening", "health"]
)
TABLE5_QUERY = (
    "The weather has turned cooler recently. Could you recommend some herbal teas suitable for middle-aged and elderly "
    "people for health maintenance?"
)
TABLE5_AUCTION_GINSENG = (
    "As the weather turns cooler, middle-aged and elderly individuals need to pay extra attention to staying warm and "
    "maintaining their health. Below are some recommended health-boosting teas designed to enhance immunity, regulate "
    "qi and blood, and alleviate fatigue.\n\n"
    "For example, you might try [@American Ginseng Tea@\\[Ad-3356\\]](#). This tea is rich in natural ingredients such "
    "as astragalus, American ginseng, and goji berries, which help replenish qi and blood while strengthening the body. "
    "It is particularly suitable for consumption during autumn and winter."
)
TABLE5_PRETRAINED_BOTH = (
    "As the weather turns cooler, middle-aged and elderly individuals may benefit from drinking warm, nourishing herbal "
    "teas that support digestion and regulate qi and blood. Here are some recommendations:\n\n"
    "1. Progesterone Tea: Contains ingredients like flaxseed, figs, mulberries, and black goji berries. It alleviates "
    "fatigue and improves sleep quality, making it ideal as a daily beverage. [@Progesterone Tea@\\[Ad-2489\\]](#).\n"
    "2. American Ginseng, Astragalus, and Goji Berry Tea: This blend replenishes qi and blood, enhances stamina, and "
    "reduces fatigue. For a milder flavor, steep with a few red dates or longan. [@American Ginseng Tea@\\[Ad-3356\\]](#)."
)


def world_questions(n: int, user_prefix: str = "w"):
    """``n`` questions from the world's templates, cycling over its interests: per question
    ``(interest, query, profile, relevant ads, other ads)``, the relevant ones of the categories
    behind the question's interest (``world_vocab.json``), in catalog order. Which ads an answer
    shows is the caller's draw."""
    import json
    from importlib import resources

    from llm_auction.schemas.catalog import load_catalog

    vocab = json.loads(resources.files("llm_auction.data").joinpath("world_vocab.json").read_text())
    interests, templates, ads = sorted(vocab["interests"]), vocab["query_templates"], list(load_catalog())
    for k in range(n):
        interest = interests[k % len(interests)]
        query = templates[k % len(templates)].format(interest=interest, interest2=interest, season="autumn", occupation="teacher", age="35")
        profile = UserProfile(user_id=f"{user_prefix}{k}", info="A 35-year-old teacher living in Shanghai.",
                              interests=[interest, interests[(k + 7) % len(interests)]])
        cats = set(vocab["interests"][interest])
        yield interest, query, profile, [a for a in ads if a.category in cats], [a for a in ads if a.category not in cats]

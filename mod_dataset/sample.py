"""A small synthetic release in the official layout, made deterministically: the demo's and the tests' data.

Forty memes are drawn with PIL; each belongs to an emotion and a topic word. Dialogues talk about topics, and a
speaker who answers about a topic often sends its meme, with the meme's emotion: the context predicts the meme.
Some meme turns carry no emotion, as in the real dialogues. Memes 032-039 never appear in train or validation and
make up part of the hard test. The task files follow the organisers' layout: a task 2 reply's text is the last
history turn (a meme-only reply has none), with 10 or 11 candidates; a task 3 history ends with the meme turn
without its emotion, which the answer holds. `id2feature.json` stands in for the organisers' CLIP features.
"""

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

EMOTIONS = ["开心", "难过", "生气", "惊讶", "害怕", "无语", "喜欢", "疑惑"]
TOPICS = (
    "猫咪 小狗 火锅 考试 下雨 加班 周末 电影 奶茶 蛋糕 跑步 游泳 旅游 地铁 外卖 作业 老板 红包 "
    "生日 礼物 面试 减肥 熬夜 咖啡 音乐 篮球 足球 游戏 手机 快递 搬家 感冒 太阳 雪人 烧烤 西瓜 "
    "夜市 相亲 彩票 闹钟"
).split()
NUM_MEMES = len(TOPICS)
UNSEEN = range(32, 40)
FEELINGS = {
    "开心": ["太棒了", "好开心啊", "哈哈真好"],
    "难过": ["好难过", "想哭了", "心好累"],
    "生气": ["气死我了", "太过分了", "真烦人"],
    "惊讶": ["真的假的", "天哪", "没想到啊"],
    "害怕": ["好可怕", "吓死我了", "不敢看"],
    "无语": ["无语了", "我服了", "算了吧"],
    "喜欢": ["好喜欢", "爱了爱了", "太可爱了"],
    "疑惑": ["为什么呢", "不明白", "怎么回事"],
}
NO_EMOTION_RATE = 0.15  # meme turns without an emotion_id
ELEVEN_CANDIDATES_RATE = 0.25  # task 2 instances with 11 candidates instead of 10
FEATURE_SIZE = 512
FEATURE_SEED = 512
ASKS = ["你觉得{t}怎么样", "今天的{t}呢", "说说{t}吧", "{t}怎么了", "听说{t}了"]
SMALL_TALK = ["你好呀", "在干嘛呢", "吃饭了吗", "最近好吗", "晚安", "嗯嗯", "好的", "明天见", "是吗", "我也是"]
COLOURS = [
    (250, 200, 60),
    (90, 120, 220),
    (220, 60, 50),
    (240, 140, 30),
    (90, 60, 120),
    (150, 150, 150),
    (240, 110, 170),
    (60, 170, 150),
]

SHAPE_COLOURS = [(255, 255, 255), (160, 90, 40), (230, 0, 230), (0, 200, 0), (0, 190, 255)]
SHAPE_BOX = (20, 16, 44, 40)


def meme_id(index: int) -> str:
    return f"{index:03d}"


def emotion_of(index: int) -> int:
    return index % len(EMOTIONS)


def draw_meme(index: int) -> Image.Image:
    """A 64x64 sticker: a background of its emotion's colour (most of the image), and a small shape in a colour of
    its own and a face that tell it apart."""
    image = Image.new("RGB", (64, 64), COLOURS[emotion_of(index)])
    draw = ImageDraw.Draw(image)
    shape = index // len(EMOTIONS)
    fill = SHAPE_COLOURS[shape]
    box = SHAPE_BOX
    if shape == 0:
        draw.ellipse(box, fill=fill)
    elif shape == 1:
        draw.rectangle(box, fill=fill)
    elif shape == 2:
        draw.chord(box, 20, 340, fill=fill)
    elif shape == 3:
        draw.pieslice(box, 20, 340, fill=fill)
    else:
        draw.rounded_rectangle(box, radius=10, fill=fill)
    eye = 2 + index % 4
    draw.ellipse((20 - eye, 24 - eye, 20 + eye, 24 + eye), fill=(0, 0, 0))
    draw.ellipse((44 - eye, 24 - eye, 44 + eye, 24 + eye), fill=(0, 0, 0))
    mood = emotion_of(index)
    mouth = (22, 36 + mood, 42, 48 - mood // 2)
    draw.arc(mouth, 200 if mood in (1, 4) else 20, 340 if mood in (1, 4) else 160, fill=(0, 0, 0), width=2)
    draw.text((4, 50), meme_id(index), fill=(0, 0, 0))
    return image


def make_dialogue(rng: random.Random, meme_pool: list[int]) -> list[dict]:
    """Small talk with one to three topics; the answer to a topic is often its meme."""
    turns: list[dict] = []

    def say(**content) -> None:
        turns.append({"speaker_id": "[speaker1]" if len(turns) % 2 == 0 else "[speaker2]", **content})

    if rng.random() < 0.6:
        say(txt=rng.choice(SMALL_TALK))
    for index in rng.sample(meme_pool, rng.randint(1, 3)):
        topic, emotion = TOPICS[index], emotion_of(index)
        say(txt=rng.choice(ASKS).format(t=topic))
        style = rng.random()
        feeling = f"{topic}{rng.choice(FEELINGS[EMOTIONS[emotion]])}"
        meme = {"img_id": meme_id(index)}
        if rng.random() >= NO_EMOTION_RATE:
            meme["emotion_id"] = emotion
        if style < 0.45:
            say(txt=feeling, **meme)
        elif style < 0.75:
            say(**meme)
        else:
            say(txt=feeling)
        if rng.random() < 0.4:
            say(txt=rng.choice(SMALL_TALK))
    return turns


def task_instances(dialogues: list[list[dict]], rng: random.Random, candidate_pool: list[int]) -> dict[str, list]:
    """One instance per task and dialogue where the dialogue has such an answer (task 3: a meme with its emotion)."""
    tasks: dict[str, list] = {"task1": [], "task2": [], "task3": []}
    for turns in dialogues:
        text_answers = [k for k in range(1, len(turns)) if turns[k].get("txt")]
        meme_answers = [k for k in range(1, len(turns)) if "img_id" in turns[k]]
        emotion_answers = [k for k in meme_answers if "emotion_id" in turns[k]]
        if text_answers:
            k = rng.choice(text_answers)
            tasks["task1"].append(
                {"history": turns[:k], "answer": {"speaker_id": turns[k]["speaker_id"], "txt": turns[k]["txt"]}}
            )
        if meme_answers:
            tasks["task2"].append(retrieval_instance(turns, rng.choice(meme_answers), rng, candidate_pool))
        if emotion_answers:
            k = rng.choice(emotion_answers)
            meme_turn = {key: value for key, value in turns[k].items() if key != "emotion_id"}
            answer = {"speaker_id": turns[k]["speaker_id"], "emotion_id": turns[k]["emotion_id"]}
            tasks["task3"].append({"history": [*turns[:k], meme_turn], "answer": answer})
    return tasks


def retrieval_instance(turns: list[dict], k: int, rng: random.Random, candidate_pool: list[int]) -> dict:
    """The reply at turn `k`: its text (if any) closes the history, its meme is the answer among the candidates."""
    reply, gold = turns[k], turns[k]["img_id"]
    text = [{"speaker_id": reply["speaker_id"], "txt": reply["txt"]}] if "txt" in reply else []
    size = 11 if rng.random() < ELEVEN_CANDIDATES_RATE else 10
    candidates = [gold, *rng.sample([meme_id(i) for i in candidate_pool if meme_id(i) != gold], size - 1)]
    rng.shuffle(candidates)
    return {
        "history": turns[:k] + text,
        "candidate": {"speaker_id": reply["speaker_id"], "set": candidates},
        "answer": {"speaker_id": reply["speaker_id"], "img_id": gold},
    }


def meme_features(images: list[Image.Image]) -> list[list[float]]:
    """Stand-ins for CLIP features that carry each meme's look: a fixed random +-1 projection of its centred 16x16
    pixels, L2-normalised, 4 decimals. Integer arithmetic up to the normalisation, so every platform gets the same
    numbers."""
    pixels = np.stack([np.asarray(image.reduce(4), dtype=np.int64).reshape(-1) - 128 for image in images])
    signs = random.Random(FEATURE_SEED).choices((-1, 1), k=pixels.shape[1] * FEATURE_SIZE)
    projected = pixels @ np.array(signs, dtype=np.int64).reshape(pixels.shape[1], FEATURE_SIZE)
    norms = np.sqrt((projected * projected).sum(axis=1, keepdims=True))
    return [[round(x, 4) for x in row] for row in (projected / norms).tolist()]


def write_json(path: Path, content) -> None:
    path.write_text(json.dumps(content, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def write_features(path: Path, features: dict[str, list[float]]) -> None:
    """`id2feature.json`, one meme a line, without spaces: the file stays small."""
    lines = [f"{json.dumps(meme)}:{json.dumps(vector, separators=(',', ':'))}" for meme, vector in features.items()]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")


def make_sample(
    out_dir: str | Path, seed: int = 0, num_train: int = 320, num_val: int = 40, num_test: int = 60
) -> Path:
    """Write the sample release into `out_dir` (same seed, same bytes)."""
    out = Path(out_dir)
    (out / "meme_set").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    images = [draw_meme(index) for index in range(NUM_MEMES)]
    for index, image in enumerate(images):
        image.save(out / "meme_set" / f"{meme_id(index)}.png", optimize=True)
    write_json(out / "img2id.json", {f"{meme_id(i)}.png": meme_id(i) for i in range(NUM_MEMES)})
    write_features(out / "id2feature.json", dict(zip(map(meme_id, range(NUM_MEMES)), meme_features(images))))
    write_json(out / "emotion_dict.json", {name: i for i, name in enumerate(EMOTIONS)})
    seen = [i for i in range(NUM_MEMES) if i not in UNSEEN]
    train = {f"dialogue {i}": make_dialogue(rng, seen) for i in range(num_train)}
    val = {f"dialogue {num_train + i}": make_dialogue(rng, seen) for i in range(num_val)}
    write_json(out / "c_train.json", train)
    write_json(out / "c_val.json", val)
    splits = {
        "val": (list(val.values()), seen),
        "test_easy": ([make_dialogue(rng, seen) for _ in range(num_test)], seen),
        # Half of the hard test's topics come from memes never seen in training.
        "test_hard": ([make_dialogue(rng, list(UNSEEN) * 3 + seen) for _ in range(num_test)], list(range(NUM_MEMES))),
    }
    for stem, (dialogues, pool) in splits.items():
        for task, instances in task_instances(dialogues, rng, pool).items():
            write_json(out / f"c_{stem}_{task}.json", instances)
    return out

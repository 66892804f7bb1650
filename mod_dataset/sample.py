"""Synthetic releases in the official layout, made deterministically: the demo's and the tests' sample, and releases
with the paper's profile for benchmarks.

The sample (`make_sample`): forty memes are drawn with PIL; each belongs to an emotion and a topic word. Dialogues talk about topics, and a
speaker who answers about a topic often sends its meme, with the meme's emotion: the context predicts the meme.
Some meme turns carry no emotion, as in the real dialogues. Memes 032-039 never appear in train or validation and
make up part of the hard test. The task files follow the organisers' layout: a task 2 reply's text is the last
history turn (a meme-only reply has none), with 10 or 11 candidates; a task 3 history ends with the meme turn
without its emotion, which the answer holds. `id2feature.json` stands in for the organisers' CLIP features.

A profile release (`make_profile_release`) has the numbers of a `ReleaseProfile`, by default the paper's Table 2
(`PAPER_PROFILE`: 45,174 dialogues of 13.42 utterances on average, 11.46 characters per text, 4.06 memes per
dialogue, 307 memes of which 274 appear in training and the rest only in the hard test, 52 emotions), at full size or
a fraction of it. Its texts are random characters and its memes are drawn at random: it has the real data's shape
(lengths, with their long tail, meme use, splits, task files), not its meaning.
"""

import colorsys
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

EMOTIONS = ["开心", "难过", "生气", "惊讶", "害怕", "无语", "喜欢", "疑惑"]
# The profile releases' 52 emotions, the sample's 8 first.
PROFILE_EMOTIONS = (
    EMOTIONS
    + (
        "得意 尴尬 委屈 害羞 感动 无奈 期待 失望 紧张 放松 骄傲 嫉妒 后悔 愧疚 厌恶 烦躁 焦虑 孤独 思念 羡慕 佩服 同情 "
        "调皮 冷漠 困倦 满足 兴奋 激动 平静 崇拜 鄙视 嘲讽 震惊 悲伤 愤怒 幸福 温暖 心疼 抓狂 崩溃 淡定 期盼 安心 好奇"
    ).split()
)
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
MOODS = 8  # the faces' mouths: one per emotion of the sample, repeating for more emotions


def meme_id(index: int) -> str:
    return f"{index:03d}"


def emotion_of(index: int) -> int:
    return index % len(EMOTIONS)


def emotion_colour(emotion: int) -> tuple[int, int, int]:
    """The sample's colour for its 8 emotions; further emotions get hues spread around the colour wheel."""
    if emotion < len(COLOURS):
        return COLOURS[emotion]
    hue = (emotion * 0.618034) % 1.0  # golden-ratio steps keep neighbouring emotions apart
    return tuple(round(255 * channel) for channel in colorsys.hsv_to_rgb(hue, 0.6, 0.9))


def draw_meme(index: int, emotion: int | None = None) -> Image.Image:
    """A 64x64 sticker: a background of its emotion's colour (most of the image), and a small shape in a colour of
    its own and a face that tell it apart. The emotion defaults to the sample's `emotion_of(index)`."""
    emotion = emotion_of(index) if emotion is None else emotion
    image = Image.new("RGB", (64, 64), emotion_colour(emotion))
    draw = ImageDraw.Draw(image)
    shape = index // len(EMOTIONS) % len(SHAPE_COLOURS)
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
    mood = emotion % MOODS
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


def write_memes(out: Path, images: list[Image.Image], emotions: list[str]) -> None:
    """The meme files of a release: `meme_set/` images, `img2id.json`, `id2feature.json`, `emotion_dict.json`."""
    (out / "meme_set").mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        image.save(out / "meme_set" / f"{meme_id(index)}.png", optimize=True)
    write_json(out / "img2id.json", {f"{meme_id(i)}.png": meme_id(i) for i in range(len(images))})
    write_features(out / "id2feature.json", dict(zip(map(meme_id, range(len(images))), meme_features(images))))
    write_json(out / "emotion_dict.json", {name: i for i, name in enumerate(emotions)})


def write_dialogues_and_tasks(
    out: Path,
    train: dict[str, list[dict]],
    val: dict[str, list[dict]],
    val_pool: list[int],
    tests: dict[str, tuple[list[list[dict]], list[int]]],
    rng: random.Random,
) -> None:
    """`c_train.json`, `c_val.json`, and the task files of validation and of each test (stem -> its dialogues and
    candidate pool), whose instances draw on `rng`."""
    write_json(out / "c_train.json", train)
    write_json(out / "c_val.json", val)
    for stem, (dialogues, pool) in {"val": (list(val.values()), val_pool), **tests}.items():
        for task, instances in task_instances(dialogues, rng, pool).items():
            write_json(out / f"c_{stem}_{task}.json", instances)


def make_sample(
    out_dir: str | Path, seed: int = 0, num_train: int = 320, num_val: int = 40, num_test: int = 60
) -> Path:
    """Write the sample release into `out_dir` (same seed, same bytes)."""
    out = Path(out_dir)
    rng = random.Random(seed)
    write_memes(out, [draw_meme(index) for index in range(NUM_MEMES)], EMOTIONS)
    seen = [i for i in range(NUM_MEMES) if i not in UNSEEN]
    train = {f"dialogue {i}": make_dialogue(rng, seen) for i in range(num_train)}
    val = {f"dialogue {num_train + i}": make_dialogue(rng, seen) for i in range(num_val)}
    tests = {
        "test_easy": ([make_dialogue(rng, seen) for _ in range(num_test)], seen),
        # Half of the hard test's topics come from memes never seen in training.
        "test_hard": ([make_dialogue(rng, list(UNSEEN) * 3 + seen) for _ in range(num_test)], list(range(NUM_MEMES))),
    }
    write_dialogues_and_tasks(out, train, val, seen, tests, rng)
    return out


# Releases with the paper's profile -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseProfile:
    """
    The numbers of a synthetic release. The defaults are the paper's Table 2; the table gives no split sizes, so
    validation and each test take 1,500 dialogues. Turns beyond the first two and characters beyond the first follow
    log-normal laws with these means (`*_spread` is their sigma), which gives the real data's long tail: about 2% of
    the dialogues encode to more than the decoder's 513 positions.
    """

    dialogues: int = 45_174
    validation_dialogues: int = 1_500
    test_dialogues: int = 1_500  # each of the easy and the hard test
    turns_per_dialogue: float = 13.42
    characters_per_text: float = 11.46
    memes_per_dialogue: float = 4.06
    memes: int = 307
    seen_memes: int = 274  # memes 000-273 appear in training; the others only in the hard test
    emotions: int = 52
    turn_spread: float = 0.6
    text_spread: float = 0.6
    meme_only_rate: float = 0.2  # meme turns without text
    hard_unseen_rate: float = 0.5  # the hard test's meme turns that send an unseen meme

    def __post_init__(self) -> None:
        if not 1 <= self.emotions <= len(PROFILE_EMOTIONS):
            raise ValueError(f"ReleaseProfile.emotions must be 1 to {len(PROFILE_EMOTIONS)}, got {self.emotions}.")
        if not 0 < self.seen_memes < self.memes:
            raise ValueError(
                f"ReleaseProfile.seen_memes must be at least 1 and fewer than memes={self.memes} (the rest appear "
                f"only in the hard test), got {self.seen_memes}."
            )
        if self.turns_per_dialogue <= 2 or self.characters_per_text <= 1:
            raise ValueError(
                "ReleaseProfile needs more than 2 turns per dialogue and more than 1 character per text on average, "
                f"got {self.turns_per_dialogue} and {self.characters_per_text}."
            )

    def split_sizes(self, fraction: float = 1.0) -> dict[str, int]:
        """Dialogues per split (`train`, `val`, `test_easy`, `test_hard`) at `fraction` of the full size."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}.")
        held_out = [self.validation_dialogues, self.test_dialogues, self.test_dialogues]
        sizes = [max(1, round(size * fraction)) for size in [self.dialogues - sum(held_out), *held_out]]
        return dict(zip(("train", "val", "test_easy", "test_hard"), sizes))


PAPER_PROFILE = ReleaseProfile()
CHARACTERS = [chr(0x4E00 + offset) for offset in range(3500)]  # the texts' alphabet: common CJK ideographs


def log_normal_count(rng: random.Random, mean: float, spread: float) -> int:
    """A whole number drawn from the log-normal law with this mean and sigma `spread`."""
    return round(rng.lognormvariate(math.log(mean) - spread**2 / 2, spread))


def profile_turn(rng: random.Random, index: int, profile: ReleaseProfile, pick_meme) -> dict:
    turn = {"speaker_id": "[speaker1]" if index % 2 == 0 else "[speaker2]"}
    with_meme = rng.random() < profile.memes_per_dialogue / profile.turns_per_dialogue
    if not (with_meme and rng.random() < profile.meme_only_rate):
        length = 1 + log_normal_count(rng, profile.characters_per_text - 1, profile.text_spread)
        turn["txt"] = "".join(rng.choices(CHARACTERS, k=length))
    if with_meme:
        meme = pick_meme(rng)
        turn["img_id"] = meme_id(meme)
        if rng.random() >= NO_EMOTION_RATE:
            turn["emotion_id"] = meme % profile.emotions
    return turn


def profile_dialogue(rng: random.Random, profile: ReleaseProfile, pick_meme) -> list[dict]:
    turns = 2 + log_normal_count(rng, profile.turns_per_dialogue - 2, profile.turn_spread)
    return [profile_turn(rng, index, profile, pick_meme) for index in range(turns)]


def profile_dialogues(
    rng: random.Random, profile: ReleaseProfile = PAPER_PROFILE, fraction: float = 1.0
) -> dict[str, list[list[dict]]]:
    """The dialogues of each split (`train`, `val`, `test_easy`, `test_hard`) in the release's turn layout."""
    seen, unseen = profile.seen_memes, profile.memes - profile.seen_memes

    def pick_seen(rng: random.Random) -> int:
        return rng.randrange(seen)

    def pick_hard(rng: random.Random) -> int:
        return seen + rng.randrange(unseen) if rng.random() < profile.hard_unseen_rate else rng.randrange(seen)

    return {
        split: [profile_dialogue(rng, profile, pick_hard if split == "test_hard" else pick_seen) for _ in range(size)]
        for split, size in profile.split_sizes(fraction).items()
    }


def make_profile_release(
    out_dir: str | Path, fraction: float = 1.0, seed: int = 0, profile: ReleaseProfile = PAPER_PROFILE
) -> Path:
    """Write a release with `profile`'s numbers at `fraction` of its size into `out_dir` (same arguments, same bytes)."""
    out = Path(out_dir)
    rng = random.Random(seed)
    images = [draw_meme(index, index % profile.emotions) for index in range(profile.memes)]
    write_memes(out, images, PROFILE_EMOTIONS[: profile.emotions])
    splits = profile_dialogues(rng, profile, fraction)
    train = {f"dialogue {i}": turns for i, turns in enumerate(splits["train"])}
    val = {f"dialogue {len(train) + i}": turns for i, turns in enumerate(splits["val"])}
    seen, every = list(range(profile.seen_memes)), list(range(profile.memes))
    tests = {"test_easy": (splits["test_easy"], seen), "test_hard": (splits["test_hard"], every)}
    write_dialogues_and_tasks(out, train, val, seen, tests, rng)
    return out

"""The meme-dialogue pipeline and the terminal chat, on a saved tiny model."""

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import DIALOGUES, EMOTIONS, MEME_IDS, REPO_ROOT
from PIL import Image
from test_processor import long_dialogue
from transformers import GPT2Config

import chat
import pipeline_mod
from pipeline_mod import MemeDialoguePipeline, forward_dialogues, load_mod_gpt, model_source


@pytest.fixture
def saved_model(model, processor, tmp_path):
    folder = tmp_path / "saved"
    MemeDialoguePipeline(model=model, processor=processor).save_pretrained(folder)
    return folder


def test_a_saved_pipeline_keeps_the_whole_processor(saved_model, processor):
    reloaded = load_mod_gpt(str(saved_model))[1]
    assert reloaded.emotion_names == processor.emotion_names == EMOTIONS
    assert reloaded.max_length == processor.max_length


@pytest.mark.slow
def test_pipeline_loads_from_saved_folder_in_fresh_process(saved_model, tmp_path):
    assert json.loads((saved_model / "config.json").read_text())["custom_pipelines"]["meme-dialogue"]
    script = textwrap.dedent(
        f"""
        import json
        import torch
        from PIL import Image
        from transformers import pipeline
        torch.manual_seed(0)
        chat = pipeline(model={str(saved_model)!r}, trust_remote_code=True, memes={{"new": Image.new("RGB", (40, 40))}})
        assert type(chat).__module__.startswith("transformers_modules."), type(chat).__module__
        dialogues = {DIALOGUES!r}
        one = chat(dialogues[0], max_new_tokens=4, num_memes=3)
        many = chat(dialogues, batch_size=2, max_new_tokens=4)
        assert len(many) == 3 and "new" in chat.meme_bank.ids and "new" not in chat.model.meme_bank.ids
        for reply in [one, *many]:
            assert set(reply) == {{"speaker", "text", "meme", "meme_image", "emotion", "top_memes"}}, reply
        assert len(one["top_memes"]) == 3
        errors = []
        for bad in ([], [{{"speaker": "speaker1", "text": "hi", "meme": "999"}}]):
            try:
                chat(bad)
            except ValueError as error:
                errors.append(str(error))
        print(json.dumps(errors))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    assert "non-empty list" in errors[0] and "turn 0: 'meme' '999'" in errors[1]


def test_pipeline_returns_meme_image_for_chosen_meme(model, processor):
    images = {meme: Image.new("RGB", (32, 32), (i * 20, 0, 0)) for i, meme in enumerate(MEME_IDS)}
    model.usage_head.out_proj.bias.data[:] = model.usage_head.out_proj.bias.data.new_tensor([-50.0, 50.0])
    reply = MemeDialoguePipeline(model=model, processor=processor, memes=images)(DIALOGUES[1], max_new_tokens=3)
    assert reply["meme"] in MEME_IDS and reply["meme_image"] is images[reply["meme"]]


def test_chat_keeps_running_after_bad_input_and_resets(model, processor):
    lines = ["你好", "看这个 #999", "/memes", "哈哈 #001", "/reset", "在吗", "/quit", "never read"]
    written = []
    chat.chat(model, processor, {"001": "happy.png"}, lines, write=written.append, max_new_tokens=3)
    replies = [line for line in written if line.startswith("MOD-GPT:")]
    assert len(replies) == 3
    assert any(line.startswith("error:") and "'999'" in line for line in written)
    assert " ".join(MEME_IDS) in written and "(new dialogue)" in written
    assert chat.parse_message("太好了 #042", "speaker1") == {
        "speaker": "speaker1",
        "text": "太好了",
        "meme": "042",
        "emotion": None,
    }
    assert chat.parse_message("#042", "speaker1")["text"] is None


@pytest.mark.slow
def test_chat_cli_in_terminal_session(saved_model):
    """chat.py as a user runs it: lines on stdin, replies on stdout, an error does not end it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "chat.py"), "--model", str(saved_model), "--max_new_tokens", "3"],
        input="你好\n#999\n今天好开心\n/quit\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("MOD-GPT:") == 2 and "error:" in result.stdout


# Long histories -----------------------------------------------------------------------------------------------------


@pytest.fixture
def recorded_lengths(model, monkeypatch):
    """The prompt lengths `generate` gets, with its `max_new_tokens`, and the largest position the decoder embeds."""
    recorded = {"prompts": [], "positions": []}
    generate = model.generate

    def recording_generate(**kwargs):
        recorded["prompts"].append((kwargs["input_ids"].shape[1], kwargs["max_new_tokens"]))
        return generate(**kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    hook = model.model.language_model.wpe.register_forward_hook(
        lambda module, args, output: recorded["positions"].append(int(args[0].max()) + 1)
    )
    yield recorded
    hook.remove()


@pytest.mark.parametrize("max_new_tokens", [8, 32])
def test_long_history_keeps_the_latest_turns_that_fit_the_decoder(model, processor, recorded_lengths, max_new_tokens):
    history = long_dialogue()  # over 800 tokens, beyond the processor's max_length and the decoder's 256 positions
    positions = model.config.text_config.n_positions
    model.usage_head.out_proj.bias.data = torch.tensor([-50.0, 50.0])  # attach a meme: the longest closing pass
    kwargs = dict(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)
    reply = model.respond(history, processor, **kwargs)
    pipeline_reply = MemeDialoguePipeline(model=model, processor=processor)(history, **kwargs)
    assert reply["meme"] is not None and pipeline_reply["meme"] is not None
    limit = positions - max_new_tokens
    expected = processor.encode_dialogue(history, add_generation_prompt=True, max_length=limit)["input_ids"]
    assert recorded_lengths["prompts"] == [(len(expected), max_new_tokens)] * 2
    assert len(expected) > limit - max(len(processor.encode_dialogue([turn])["input_ids"]) for turn in history)
    assert max(recorded_lengths["positions"]) <= positions


def test_overlong_latest_turn_is_an_error_with_its_numbers(model, processor):
    long_turn = {"speaker": "speaker1", "text": "好" * 236, "meme": None, "emotion": None}  # 240 tokens, +2 prompt
    dialogue = [*DIALOGUES[1], long_turn]
    message = r"dialogue 0, turn 2: 'text' encodes to 242 tokens .*more than max_length=240"
    with pytest.raises(ValueError, match=message):
        model.respond(dialogue, processor, max_new_tokens=16)
    with pytest.raises(ValueError, match=message):
        MemeDialoguePipeline(model=model, processor=processor)(dialogue, max_new_tokens=16)
    assert model.respond(dialogue, processor, max_new_tokens=14)["speaker"] == "speaker2"


def test_chat_reports_an_overlong_message_and_keeps_the_dialogue(model, processor, monkeypatch):
    dialogues = []
    respond = model.respond
    monkeypatch.setattr(
        model, "respond", lambda dialogue, *a, **k: dialogues.append(dialogue) or respond(dialogue, *a, **k)
    )
    lines = ["你好", "好" * 300, "哈哈哈"]
    written = []
    chat.chat(model, processor, {}, lines, write=written.append, max_new_tokens=4)
    errors = [line for line in written if line.startswith("error:")]
    assert len(errors) == 1 and "turn 2: 'text' encodes to 306 tokens" in errors[0] and "max_length=252" in errors[0]
    assert len([line for line in written if line.startswith("MOD-GPT:")]) == 2
    assert [turn["text"] for turn in dialogues[-1][::2]] == ["你好", "哈哈哈"] and len(dialogues[-1]) == 3


# Bad input to respond and the pipeline ------------------------------------------------------------------------------


@pytest.fixture
def no_generation(model, monkeypatch):
    """Fail the test if `generate` runs: bad input must be refused before any work."""

    def refuse(**kwargs):
        raise AssertionError("generate ran before the input was checked")

    monkeypatch.setattr(model, "generate", refuse)


BAD_RESPOND_CALLS = [
    ({"dialogues": DIALOGUES[1][0]}, r"Expected a dialogue \(a non-empty list of turns\) .*, got dict"),
    ({"dialogues": "你好"}, r"Expected a dialogue .*, got str '你好'"),
    ({"dialogues": [DIALOGUES[1], "你好"]}, r"dialogue 1: a dialogue must be a non-empty list of turns, got str"),
    ({"candidates": []}, r"candidates of dialogue 0: expected a non-empty list of meme ids, got \[\]"),
    ({"candidates": "001"}, r"candidates of dialogue 0: expected a non-empty list of meme ids, got '001'"),
    ({"candidates": ["001", "404"]}, r"candidates of dialogue 0: \['404'\] are not in the model's meme bank"),
    ({"candidates": ["001", "002", "001"]}, r"candidates of dialogue 0: \['001'\] appear more than once"),
    ({"num_memes": -1}, r"num_memes must be a positive integer or None, got -1"),
    ({"num_memes": 0}, r"num_memes must be a positive integer or None, got 0"),
    ({"num_memes": 2.5}, r"num_memes must be a positive integer or None, got 2.5"),
    ({"num_memes": True}, r"num_memes must be a positive integer or None, got True"),
    ({"use_meme": "yes"}, r"use_meme must be True, False or None \(the usage head decides\), got 'yes'"),
]


@pytest.mark.parametrize("call, message", BAD_RESPOND_CALLS)
def test_respond_refuses_bad_input_before_generating(model, processor, no_generation, call, message):
    call = {"dialogues": DIALOGUES[1], **call}
    with pytest.raises(ValueError, match=message):
        model.respond(call.pop("dialogues"), processor, **call)


def test_respond_takes_one_candidate_list_per_dialogue_of_a_batch(model, processor, no_generation):
    with pytest.raises(ValueError, match=r"candidates must hold one list of meme ids per dialogue \(2\)"):
        model.respond(DIALOGUES[:2], processor, candidates=[["001", "002"]])
    with pytest.raises(ValueError, match=r"candidates of dialogue 1: \['404'\] are not in the model's meme bank"):
        model.respond(DIALOGUES[:2], processor, candidates=[["001"], ["404"]])


@pytest.mark.parametrize("call, message", BAD_RESPOND_CALLS)
def test_pipeline_refuses_what_respond_refuses(model, processor, no_generation, call, message):
    call = {"dialogues": DIALOGUES[1], **call}
    with pytest.raises(ValueError, match=message):
        MemeDialoguePipeline(model=model, processor=processor)(call.pop("dialogues"), **call)


@pytest.mark.parametrize(
    "dialogues, message",
    [
        (5, r"Expected a dialogue .*, got int 5"),
        ([], r"Expected a dialogue .*, got list \[\]"),
        ([DIALOGUES[0], DIALOGUES[1][0]], r"dialogue 1: a dialogue must be a non-empty list of turns, got dict"),
        ([DIALOGUES[1][0], "你好"], r"dialogue 0, turn 1: a turn must be a dict, got str '你好'"),
        ([*DIALOGUES, [{"speaker": "speaker1", "text": ["hi"]}]], r"dialogue 3, turn 0: 'text' must be a string"),
        ([*DIALOGUES, [{"speaker": "speaker1", "meme": "404"}]], r"dialogue 3, turn 0: 'meme' '404' is unknown"),
    ],
)
def test_pipeline_inputs_of_the_wrong_shape_are_named(model, processor, no_generation, dialogues, message):
    with pytest.raises(ValueError, match=message):
        MemeDialoguePipeline(model=model, processor=processor)(dialogues, batch_size=2)


@pytest.mark.parametrize("batch_size", [-1, 0, 1.5, True])
def test_pipeline_batch_size_must_be_a_positive_integer(model, processor, no_generation, batch_size):
    with pytest.raises(ValueError, match=rf"batch_size must be a positive integer, got {batch_size}"):
        MemeDialoguePipeline(model=model, processor=processor)(DIALOGUES, batch_size=batch_size)


@pytest.mark.parametrize("batch_size", [0, "2"])
def test_pipeline_batch_size_is_checked_when_the_pipeline_is_built(model, processor, batch_size):
    with pytest.raises(ValueError, match=rf"batch_size must be a positive integer, got {batch_size!r}"):
        MemeDialoguePipeline(model=model, processor=processor, batch_size=batch_size)


def test_the_pipelines_batch_size_applies_unless_a_call_gives_its_own(model, processor, monkeypatch):
    batches = []

    def reply_to_dialogues(model, processor, dialogues, candidates=None, **kwargs):
        batches.append(len(dialogues))
        return [{"speaker": "speaker2", "text": "", "meme": None, "emotion": None, "top_memes": []}] * len(dialogues)

    monkeypatch.setattr(pipeline_mod, "reply_to_dialogues", reply_to_dialogues)
    chat_pipeline = MemeDialoguePipeline(model=model, processor=processor, batch_size=2)
    chat_pipeline(DIALOGUES)
    chat_pipeline(DIALOGUES, batch_size=3)
    MemeDialoguePipeline(model=model, processor=processor)(DIALOGUES)
    assert batches == [2, 1, 3, 1, 1, 1]


def test_pipeline_candidates_apply_to_every_dialogue_of_a_batch(model, processor):
    model.usage_head.out_proj.bias.data[:] = model.usage_head.out_proj.bias.data.new_tensor([-50.0, 50.0])
    candidates = ["002", "005", "006"]
    chat_pipeline = MemeDialoguePipeline(model=model, processor=processor)
    replies = chat_pipeline(DIALOGUES, candidates=candidates, batch_size=2, max_new_tokens=2)
    assert len(replies) == len(DIALOGUES)
    for reply in replies:
        assert reply["meme"] in candidates
        assert sorted(entry["meme"] for entry in reply["top_memes"]) == sorted(candidates)


# The reply format, and what reaches generate ------------------------------------------------------------------------


REPLY_KEYS = {"speaker", "text", "meme", "emotion", "top_memes"}


def attach_memes(model, attach: bool) -> None:
    """Make the usage head decide to attach a meme (or not) at every [TAG]."""
    model.usage_head.out_proj.bias.data = torch.tensor([-50.0, 50.0] if attach else [50.0, -50.0])


@pytest.fixture
def generate_calls(model, monkeypatch):
    """The keyword arguments of every `generate` call, the call going on as usual."""
    calls = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda **kwargs: calls.append(kwargs) or generate(**kwargs))
    return calls


def test_top_k_and_sampling_arguments_reach_generate_and_leave_the_meme_list_alone(model, processor, generate_calls):
    sampling = {"top_k": 50, "top_p": 0.8, "temperature": 1.3, "max_new_tokens": 3}
    reply = model.respond(DIALOGUES[0], processor, **sampling)
    pipeline_reply = MemeDialoguePipeline(model=model, processor=processor)(DIALOGUES[0], **sampling)
    assert len(generate_calls) == 2
    for call in generate_calls:
        assert {key: call[key] for key in sampling} == sampling
    for listed in (reply["top_memes"], pipeline_reply["top_memes"]):
        assert len(listed) == 5  # the default num_memes, whatever top_k is


@pytest.mark.parametrize("num_memes", [1, 3, None])
def test_num_memes_lists_the_best_ranked_memes_with_higher_scores_first(model, processor, num_memes):
    attach_memes(model, True)
    reply = model.respond(DIALOGUES[1], processor, num_memes=num_memes, max_new_tokens=3)
    assert set(reply) == REPLY_KEYS
    listed = reply["top_memes"]
    assert len(listed) == (num_memes or len(MEME_IDS)) and {meme["meme"] for meme in listed} <= set(MEME_IDS)
    scores = [meme["score"] for meme in listed]
    assert all(isinstance(score, float) and score <= 0 for score in scores)  # minus an L2 distance
    assert scores == sorted(scores, reverse=True) and listed[0]["meme"] == reply["meme"]


def test_a_score_is_minus_the_retrieval_distance_of_the_reply(model, processor):
    reply = model.respond(DIALOGUES[1], processor, num_memes=None, max_new_tokens=3)
    closing = {"speaker": reply["speaker"], "text": reply["text"]}
    inputs, outputs = forward_dialogues(model, processor, [[*DIALOGUES[1], closing]])
    prediction = outputs.meme_predictions[-1:]
    (ranking,) = model.meme_bank.rank(prediction)
    assert [meme["meme"] for meme in reply["top_memes"]] == ranking.meme_ids
    expected = [-distance for distance in ranking.distances]
    torch.testing.assert_close(torch.tensor([meme["score"] for meme in reply["top_memes"]]), torch.tensor(expected))


@pytest.mark.parametrize("head_attaches", [True, False])
def test_use_meme_overrides_the_usage_head_and_none_follows_it(model, processor, head_attaches):
    attach_memes(model, head_attaches)
    follows = model.respond(DIALOGUES, processor, max_new_tokens=2)
    always = model.respond(DIALOGUES, processor, use_meme=True, max_new_tokens=2)
    never = model.respond(DIALOGUES, processor, use_meme=False, max_new_tokens=2)
    assert all((reply["meme"] is not None) == head_attaches for reply in follows)
    assert all(reply["meme"] == reply["top_memes"][0]["meme"] and reply["emotion"] in EMOTIONS for reply in always)
    assert all(reply["meme"] is None and reply["emotion"] is None and reply["top_memes"] for reply in never)
    piped = MemeDialoguePipeline(model=model, processor=processor)(DIALOGUES, use_meme=not head_attaches)
    assert all((reply["meme"] is not None) == (not head_attaches) for reply in piped)


def test_the_pipeline_gives_respond_s_reply_with_the_meme_image(model, processor):
    attach_memes(model, True)
    images = {meme: Image.new("RGB", (32, 32), (i * 20, 0, 0)) for i, meme in enumerate(MEME_IDS)}
    torch.manual_seed(0)
    reply = model.respond(DIALOGUES[2], processor, max_new_tokens=4)
    torch.manual_seed(0)
    piped = MemeDialoguePipeline(model=model, processor=processor, memes=images)(DIALOGUES[2], max_new_tokens=4)
    assert piped == {**reply, "meme_image": images[reply["meme"]]}


def test_arguments_given_to_the_pipeline_apply_to_every_call(model, processor):
    chat_pipeline = MemeDialoguePipeline(model=model, processor=processor, num_memes=2, max_new_tokens=2)
    assert len(chat_pipeline(DIALOGUES[0])["top_memes"]) == 2
    assert len(chat_pipeline(DIALOGUES[0], num_memes=4)["top_memes"]) == 4


# Memes of a pipeline stay in that pipeline --------------------------------------------------------------------------


def bank_state(bank) -> tuple[list[str], torch.Tensor]:
    return list(bank.ids), bank.features.clone()


def test_memes_given_to_a_pipeline_stay_out_of_the_shared_model_and_other_pipelines(model, processor):
    attach_memes(model, True)
    before = bank_state(model.meme_bank)
    config_ids = list(model.config.meme_bank_ids)
    plain = MemeDialoguePipeline(model=model, processor=processor)
    with_memes = MemeDialoguePipeline(model=model, processor=processor, memes={"new": Image.new("RGB", (40, 40))})
    reply = with_memes(DIALOGUES[1], candidates=["new"], max_new_tokens=2)
    assert reply["meme"] == "new" and reply["meme_image"] is not None
    per_call = plain(DIALOGUES[1], candidates=["once"], memes={"once": Image.new("RGB", (40, 40), "red")})
    assert per_call["meme"] == "once"
    for bank in (model.meme_bank, plain.meme_bank):
        ids, features = bank_state(bank)
        assert ids == before[0] and torch.equal(features, before[1])
    assert model.config.meme_bank_ids == config_ids and model.meme_bank.ids == MEME_IDS
    assert "new" in with_memes.meme_bank.ids and "once" not in with_memes.meme_bank.ids
    for chat_pipeline, meme in ((plain, "new"), (plain, "once"), (with_memes, "once")):
        with pytest.raises(
            ValueError, match=rf"candidates of dialogue 0: \['{meme}'\] are not in the model's meme bank"
        ):
            chat_pipeline(DIALOGUES[1], candidates=[meme])
    dialogue_with_new = [*DIALOGUES[1], {"speaker": "speaker2", "text": None, "meme": "new", "emotion": None}]
    assert with_memes(dialogue_with_new, max_new_tokens=2)["speaker"] == "speaker1"
    with pytest.raises(ValueError, match="'meme' 'new' is unknown"):
        model.respond(dialogue_with_new, processor)


def test_a_memes_table_given_to_a_pipeline_stays_out_of_the_model(model, processor):
    import datasets

    images = [Image.new("RGB", (40, 40), colour) for colour in ("red", "blue")]
    table = datasets.Dataset.from_dict({"meme_id": ["001", "t1"], "image": images})
    before = bank_state(model.meme_bank)
    chat_pipeline = MemeDialoguePipeline(model=model, processor=processor, memes=table)
    assert chat_pipeline.meme_bank.ids == [*MEME_IDS, "t1"]
    ids, features = bank_state(model.meme_bank)
    assert ids == before[0] and torch.equal(features, before[1])


# Loading without remote code ----------------------------------------------------------------------------------------


def marked_copy(folder, tmp_path):
    """A copy of a saved model whose code files record, in a marker file, that they ran; and that marker file."""
    marked = Path(shutil.copytree(folder, tmp_path / f"marked_{tmp_path.name}"))
    marker = tmp_path / "code_ran.txt"
    code_files = sorted(marked.glob("*.py"))
    assert {path.name for path in code_files} >= {"modeling_mod_gpt.py", "processing_mod.py"}
    for path in code_files:
        record = f"open({str(marker)!r}, 'a').write({path.name!r} + '\\n')\n"
        path.write_text(record + path.read_text(encoding="utf-8"), encoding="utf-8")
    return marked, marker


def run_chat(argv: list[str], lines: str, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    code = chat.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_chat_runs_no_code_from_the_model_folder_unless_asked(saved_model, tmp_path, monkeypatch, capsys):
    folder, marker = marked_copy(saved_model, tmp_path)
    argv = ["--model", str(folder), "--max_new_tokens", "2"]
    code, out, err = run_chat(argv, "你好\n/quit\n", monkeypatch, capsys)
    assert code == 0 and out.count("MOD-GPT:") == 1, err
    assert not marker.exists()
    code, out, err = run_chat([*argv, "--trust_remote_code"], "你好\n/quit\n", monkeypatch, capsys)
    assert code == 0 and out.count("MOD-GPT:") == 1, err
    assert {"modeling_mod_gpt.py", "processing_mod.py"} <= set(marker.read_text().split())


@pytest.mark.slow
def test_loading_on_a_terminal_neither_prompts_nor_runs_the_folder_code(saved_model, tmp_path):
    """transformers asks on a terminal whether to run a folder's code; the package's loaders never get there."""
    folder, marker = marked_copy(saved_model, tmp_path)
    script = textwrap.dedent(
        f"""
        from pipeline_mod import load_mod_gpt
        from processing_mod import MODProcessor
        model, processor = load_mod_gpt({str(folder)!r})
        MODProcessor.from_pretrained({str(folder)!r}, trust_remote_code=False)
        print("loaded", type(model).__module__, type(processor).__module__)
        """
    )
    terminal, terminal_end = os.openpty()  # standard input is a terminal no one types into
    try:
        result = subprocess.run(
            [sys.executable, "-c", script],
            stdin=terminal_end,
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            timeout=120,
        )
    finally:
        os.close(terminal), os.close(terminal_end)
    assert "[y/N]" not in result.stdout + result.stderr
    assert result.returncode == 0 and "loaded modeling_mod_gpt processing_mod" in result.stdout, result.stderr
    assert not marker.exists()


def test_chat_reports_a_missing_model_folder_without_asking_the_hub(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_chat(["--model", "runs/mod-gpt"], "", monkeypatch, capsys)
    assert code == 2 and "MOD-GPT chat" not in out
    assert err.startswith("chat.py: error: ") and "Traceback" not in err
    assert "model folder 'runs/mod-gpt' does not exist (a model on the hub is named hf://owner/name)" in err


def test_a_folder_of_another_model_type_needs_trust_remote_code(tmp_path):
    GPT2Config(n_layer=1, n_embd=8, n_head=1).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r'is not a MOD-GPT model \(config.json has model_type "gpt2", not "mod_gpt"'):
        load_mod_gpt(str(tmp_path))
    assert model_source("hf://owner/mod-gpt") == "owner/mod-gpt" and model_source(str(tmp_path)) == str(tmp_path)


def test_load_mod_gpt_gives_this_package_classes_equal_to_the_saved_model(saved_model, model, processor):
    loaded, loaded_processor = load_mod_gpt(str(saved_model))
    assert type(loaded) is type(model) and type(loaded_processor) is type(processor)
    assert not loaded.training and loaded.meme_bank.ids == model.meme_bank.ids
    inputs = processor(DIALOGUES)
    torch.testing.assert_close(loaded(**inputs).loss, model(**inputs).loss)
    assert torch.equal(loaded_processor(DIALOGUES)["input_ids"], inputs["input_ids"])


def test_the_pipeline_and_the_chat_run_where_and_as_asked(saved_model, tmp_path, monkeypatch, capsys):
    model, processor = load_mod_gpt(str(saved_model))
    chat_pipeline = MemeDialoguePipeline(model=model, processor=processor, device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    reply = chat_pipeline(DIALOGUES[0], memes={"new": Image.new("RGB", (40, 40))}, max_new_tokens=2, use_meme=True)
    assert isinstance(reply["text"], str) and all(torch.isfinite(torch.tensor(m["score"])) for m in reply["top_memes"])
    with pytest.raises(ValueError, match=r"dtype must be one of \['float32', 'bfloat16', 'float16'\], got 'float64'"):
        MemeDialoguePipeline(model=model, processor=processor, dtype="float64")
    # `transformers.pipeline` passes on its default `dtype="auto"`: the model as loaded.
    MemeDialoguePipeline(model=model, processor=processor, dtype="auto")
    assert model.dtype == torch.bfloat16

    code, out, err = run_chat(
        ["--model", str(saved_model), "--dtype", "bfloat16", "--device", "cpu"], "你好\n", monkeypatch, capsys
    )
    assert code == 0 and out.count("MOD-GPT:") == 1, err
    for flag, value, message in [("--dtype", "float64", "invalid choice"), ("--device", "gpu0", "is not a device")]:
        with pytest.raises(SystemExit) as exit_info:
            chat.main(["--model", str(tmp_path / "nowhere"), flag, value])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err

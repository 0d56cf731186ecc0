"""Stateful models: the Stepper's checks, and run_sequences on Silero VAD: sequences stepped
together in one batch answer exactly as each run alone; the 64-sample context matters."""

from __future__ import annotations

from importlib.util import find_spec
from typing import Any

import numpy as np
import pytest

import shipyard
from shipyard.data import Dataset
from shipyard.detection_metrics import detection_scores
from shipyard.errors import ServingConfigError
from shipyard.gates import Gates
from shipyard.serving import ServingConfig
from shipyard.signature import Signature
from shipyard.sources import load_model
from shipyard.stateful import SequenceConfig, Stepper, run_sequences
from shipyard.validate import validate

SIGNATURE = Signature.model_validate(
    {
        "inputs": [
            {"name": "input", "shape": ["batch", 576]},
            {"name": "state", "shape": [2, "batch", 128]},
        ],
        "outputs": [
            {"name": "probability", "shape": ["batch", 1]},
            {"name": "stateN", "shape": [2, "batch", 128]},
        ],
    }
)
SEQUENCE = {
    "state": {"input": "state", "output": "stateN"},
    "context": {"input": "input", "samples": 64},
}


def test_clients_send_the_chunk_and_get_the_outputs_without_state() -> None:
    stepper = Stepper(SIGNATURE, SequenceConfig.model_validate(SEQUENCE))
    assert stepper.client.describe_inputs() == "input: float32[batch, 512]"
    assert stepper.client.output_names == ["probability"] and stepper.chunk == 512
    carry = stepper.start()
    assert carry.states["state"].shape == (2, 1, 128) and not carry.states["state"].any()
    assert carry.context is not None and carry.context.shape == (1, 64)
    # a list of pairs is accepted too, and the recipe's serve: section carries it
    config = ServingConfig.model_validate({"sequence": {**SEQUENCE, "state": [SEQUENCE["state"]]}})
    assert config.sequence is not None and config.sequence.state[0].output == "stateN"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"state": {"input": "hidden", "output": "stateN"}}, "state input 'hidden' is not one"),
        ({"state": {"input": "state", "output": "out"}}, "state output 'out' is not one"),
        ({"context": {"input": "input", "samples": 576}}, "leaves nothing of input"),
        ({"context": {"input": "state", "samples": 4}}, "context input 'state' is not one"),
    ],
)
def test_configs_that_do_not_fit_the_model_are_refused(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ServingConfigError, match=message):
        Stepper(SIGNATURE, SequenceConfig.model_validate({**SEQUENCE, **change}))


def test_a_state_needs_the_batch_dimension() -> None:
    fixed = SIGNATURE.model_dump()
    fixed["inputs"][1]["shape"] = [2, 1, 128]
    with pytest.raises(ServingConfigError, match="needs the batch dimension 'batch'"):
        Stepper(Signature.model_validate(fixed), SequenceConfig.model_validate(SEQUENCE))


vad = pytest.mark.skipif(
    find_spec("silero_vad") is None or find_spec("pyannote") is None,
    reason="needs silero-vad (the 'vad' extra) and pyannote.audio==4.0.7 installed --no-deps",
)


@pytest.fixture(scope="module")
def model() -> shipyard.Artifact:
    return load_model("shipyard.examples.vad:silero", SIGNATURE)


@vad
def test_sequences_batched_together_answer_as_each_alone(model: shipyard.Artifact) -> None:
    """Three clips of different lengths, rows interleaved: one batch per step, states
    gathered and scattered along axis 1, each clip's answers equal to it run alone."""
    from shipyard.examples.vad import validation

    chunks = validation().inputs["input"]
    clips = [chunks[:400], chunks[300:900], chunks[500:520]]
    # rows interleaved as streams arrive: step 0 of every clip, then step 1...
    order = sorted((step, clip) for clip, c in enumerate(clips) for step in range(len(c)))
    rows = np.stack([clips[clip][step] for step, clip in order])
    ids = np.array([clip for _, clip in order])
    stepper = Stepper(SIGNATURE, SequenceConfig.model_validate(SEQUENCE))
    with shipyard.open_session(model, threads=1) as session:
        together = run_sequences(session, {"input": rows}, ids, stepper, batch_size=2)
        alone = [run_sequences(session, {"input": c}, None, stepper) for c in clips]
    for clip, answers in enumerate(alone):
        got = together["probability"][ids == clip]
        # batched products round differently: measured up to 2.6e-6
        np.testing.assert_allclose(got, answers["probability"], atol=1e-5)
        assert len(got) == len(clips[clip])


@vad
def test_the_context_makes_the_chunk_the_model_was_trained_on(model: shipyard.Artifact) -> None:
    """The trap: fed bare 512-sample chunks (state carried, no context) the network finds no
    speech at all. With the previous chunk's 64 samples in front it finds the conversation;
    with 64 zeros in front instead, nearly as well on this clip (the length is what the
    STFT needs; the carried samples are what silero's wrapper sends)."""
    import torch

    from shipyard.examples.vad import validation

    data = validation()
    assert data.labels is not None and model.module is not None
    stepper = Stepper(SIGNATURE, SequenceConfig.model_validate(SEQUENCE))
    with shipyard.open_session(model, threads=1) as session:
        carried = run_sequences(session, data.inputs, None, stepper)["probability"]

    def stepped(context: int) -> np.ndarray:
        state, answers = torch.zeros(2, 1, 128), []
        with torch.no_grad():
            for chunk in data.inputs["input"]:
                x = torch.from_numpy(np.concatenate([np.zeros(context, np.float32), chunk]))
                probability, state = model.module(x[None], state)
                answers.append(probability.item())
        return np.array(answers)

    f1 = {
        "carried": detection_scores(carried, data.labels).f1,
        "bare": detection_scores(stepped(0), data.labels).f1,
        "zeros": detection_scores(stepped(64), data.labels).f1,
    }
    assert f1["carried"] is not None and f1["carried"] > 0.98, f1
    assert f1["bare"] is not None and f1["bare"] < 0.1, f1
    assert f1["zeros"] is not None and abs(f1["zeros"] - f1["carried"]) < 0.01, f1


@vad
def test_validate_runs_sequences_and_gates_on_the_f1_drop(model: shipyard.Artifact) -> None:
    from shipyard.examples.vad import validation

    data = validation().take(400)
    config = SequenceConfig.model_validate(SEQUENCE)
    report = validate(model, model, data, Gates(max_f1_drop=0.0), task="detection", sequence=config)
    assert report.samples == 400 and report.passed
    assert report.f1_reference == report.f1_candidate and report.f1_drop == 0.0
    assert report.precision_reference is not None and report.recall_reference is not None
    assert [o.name for o in report.outputs] == ["probability"]  # the state is not compared
    assert report.to_dict()["f1_drop"] == 0.0
    assert isinstance(data, Dataset) and data.sequences is not None and len(data.sequences) == 400

"""Stateful models: what a sequence carries from one step to the next, and how steps run.

A stateful model (Silero VAD: ``input [batch, 576]``, ``state [2, batch, 128]`` ->
``probability [batch, 1]``, ``stateN [2, batch, 128]``) is called once per chunk of a
sequence (an audio stream), and each call needs what the previous one left:

- **state**: an output fed back as an input on the next step (``stateN`` -> ``state``),
  zeros on the first step, as Triton's implicit state does;
- **context**: the last ``samples`` values of the previous step's input, put in front of the
  new chunk (Silero's 64 samples: fed bare 512-sample chunks it finds no speech at all).

A client sends only the chunk; the server and the validation runner keep the rest. The
recipe's ``serve: sequence:`` (:class:`SequenceConfig`, in the manifest's ``serving``) names
the tensors; :class:`Stepper` turns it into the one implementation both use: the client's
signature, a new sequence's :class:`Carry`, the model's feeds for a batch of steps from
different sequences (chunks stacked on axis 0, states gathered along their batch axis), and
the carries and client outputs scattered back. ``run_sequences`` runs a data set through a
Session that way: every sequence (clip) in order, the state carried, the clips of one step in
one batch; validation uses it, so an artifact is judged the way it is served.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from shipyard.errors import ServingConfigError
from shipyard.processing.audio import SpeechSettings
from shipyard.signature import Signature, TensorSpec

if TYPE_CHECKING:
    from shipyard.runtimes.base import Session

Arrays = dict[str, np.ndarray]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StateConfig(_Strict):
    """``{input: state, output: stateN}``: the output fed back as the input next step."""

    input: str
    output: str


class ContextConfig(_Strict):
    """``{input: input, samples: 64}``: the last ``samples`` values (last axis) of this input
    are put in front of the next chunk; clients send chunks without them."""

    input: str
    samples: int = Field(ge=1)


class SequenceConfig(_Strict):
    """``serve: sequence:``: the model keeps state per sequence (Triton's sequence batcher
    with implicit state). Clients send ``sequence_id``, ``sequence_start`` and
    ``sequence_end`` request parameters.

    - ``state``: one ``{input, output}`` pair, or a list of them;
    - ``context``: the input whose tail is carried (None: none is);
    - ``idle_timeout_s``: a sequence unused this long is dropped with its state;
    - ``max_sequences``: live sequences at most; a new one beyond gets 503;
    - ``speech``: a WAV clip sent whole as a BYTES input is run as a sequence of its own and
      answered with speech segments (:class:`~shipyard.processing.audio.SpeechSettings`).
    """

    state: list[StateConfig] = Field(min_length=1)
    context: ContextConfig | None = None
    idle_timeout_s: float = Field(default=60.0, gt=0)
    max_sequences: int = Field(default=1024, ge=1)
    speech: SpeechSettings | None = None

    @field_validator("state", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, Mapping) else value


@dataclass(slots=True)
class Carry:
    """What one sequence carries to its next step: each state input (batch 1) and the
    context (``[1, samples]``, or None)."""

    states: Arrays
    context: np.ndarray | None


def _spec(specs: Sequence[TensorSpec], name: str, what: str) -> TensorSpec:
    found = next((spec for spec in specs if spec.name == name), None)
    if found is None:
        raise ServingConfigError(
            f"serving.sequence: {what} {name!r} is not one of the model's "
            f"{[spec.name for spec in specs]}"
        )
    return found


class Stepper:
    """How ``signature``'s model is stepped under ``config``; ServingConfigError when the two
    do not fit (names, a state without the batch dimension, a context longer than the input).
    """

    def __init__(self, signature: Signature, config: SequenceConfig) -> None:
        self.config = config
        for pair in config.state:
            _spec(signature.inputs, pair.input, "state input")
            _spec(signature.outputs, pair.output, "state output")
        state_inputs = {s.input for s in config.state}
        state_outputs = {s.output for s in config.state}
        plain = [spec for spec in signature.inputs if spec.name not in state_inputs]
        if not plain:
            raise ServingConfigError("serving.sequence: every input is a state; none is sent")
        batch = plain[0].shape[0] if plain[0].shape else None
        if not isinstance(batch, str) or any(s.shape[:1] != (batch,) for s in plain):
            raise ServingConfigError(
                f"serving.sequence: every input but the states must start with the batch "
                f"dimension; the model takes {signature.describe_inputs()}"
            )
        self.batch = batch
        self.axes: dict[str, int] = {}  # state input -> its batch axis
        self.pairs = [(s.input, s.output) for s in config.state]
        self.initial_states: Arrays = {}
        for pair in config.state:
            spec = _spec(signature.inputs, pair.input, "state input")
            if batch not in spec.shape or sum(isinstance(d, str) for d in spec.shape) != 1:
                raise ServingConfigError(
                    f"serving.sequence: state {spec.describe()} needs the batch dimension "
                    f"{batch!r} as its only dynamic one (its sequences are batched along it)"
                )
            self.axes[pair.input] = spec.shape.index(batch)
            shape = spec.concrete_shape({batch: 1})
            self.initial_states[pair.input] = np.zeros(shape, np.dtype(spec.dtype))
        self.context = config.context
        inputs = list(plain)
        if config.context is not None:
            spec = _spec(plain, config.context.input, "context input")
            last = spec.shape[-1] if len(spec.shape) > 1 else None
            if isinstance(last, int) and last <= config.context.samples:
                raise ServingConfigError(
                    f"serving.sequence: context of {config.context.samples} samples leaves "
                    f"nothing of input {spec.describe()} for the chunk"
                )
            if last is None or any(isinstance(d, str) for d in spec.shape[1:-1]):
                raise ServingConfigError(
                    f"serving.sequence: context input {spec.describe()} needs fixed "
                    f"dimensions after the batch, the last one holding the samples"
                )
            chunk = last - config.context.samples if isinstance(last, int) else last
            sent = spec.model_copy(update={"shape": (*spec.shape[:-1], chunk)})
            inputs[inputs.index(spec)] = sent
            self.context_shape = (*spec.concrete_shape({batch: 1})[:-1], config.context.samples)
            self.context_dtype = np.dtype(spec.dtype)
        outputs = [spec for spec in signature.outputs if spec.name not in state_outputs]
        self.client = Signature(inputs=tuple(inputs), outputs=tuple(outputs))
        self.output_names = [spec.name for spec in outputs]

    @property
    def chunk(self) -> int | None:
        """Samples a client sends per step on the context input (None: no context, or a
        dynamic length)."""
        if self.context is None:
            return None
        spec = _spec(self.client.inputs, self.context.input, "context input")
        last = spec.shape[-1]
        return last if isinstance(last, int) else None

    def start(self) -> Carry:
        """A new sequence's carry: zero states, a zero context."""
        context = None
        if self.context is not None:
            context = np.zeros(self.context_shape, self.context_dtype)
        return Carry(dict(self.initial_states), context)

    def feeds(self, steps: Sequence[Mapping[str, np.ndarray]], carries: Sequence[Carry]) -> Arrays:
        """The model's inputs for one batch: row ``i`` is ``steps[i]`` (a client's inputs,
        one row each) after ``carries[i]``."""
        feeds: Arrays = {}
        for name in self.client.input_names:
            rows = [step[name] for step in steps]
            feeds[name] = rows[0] if len(rows) == 1 else np.concatenate(rows)
        if self.context is not None:
            name = self.context.input
            contexts = [carry.context for carry in carries if carry.context is not None]
            head = contexts[0] if len(contexts) == 1 else np.concatenate(contexts)
            feeds[name] = np.concatenate([head, feeds[name]], axis=-1)
        for state, axis in self.axes.items():
            parts = [carry.states[state] for carry in carries]
            feeds[state] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)
        return feeds

    def advance(
        self, feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
    ) -> tuple[list[Carry], list[Arrays]]:
        """Each row's next carry and its client outputs, from one batch's feeds and outputs."""
        rows = len(feeds[self.client.input_names[0]])
        carries, answers = [], []
        tail = None
        if self.context is not None:
            tail = np.ascontiguousarray(feeds[self.context.input][..., -self.context.samples :])
        for row in range(rows):
            states = {
                name: _take(outputs[output], self.axes[name], row) for name, output in self.pairs
            }
            context = tail[row : row + 1] if tail is not None else None
            carries.append(Carry(states, context))
            answers.append({name: outputs[name][row : row + 1] for name in self.output_names})
        return carries, answers


def _take(array: np.ndarray, axis: int, row: int) -> np.ndarray:
    """Row ``row`` of ``array`` along ``axis``, keeping the axis (a copy: the batch's output
    is not kept alive by one sequence)."""
    index: list[Any] = [slice(None)] * array.ndim
    index[axis] = slice(row, row + 1)
    return array[tuple(index)].copy()


def run_sequences(
    session: Session,
    inputs: Mapping[str, np.ndarray],
    sequences: np.ndarray | None,
    stepper: Stepper,
    batch_size: int = 64,
) -> Arrays:
    """Run rows of client ``inputs`` as sequences through ``session``; the client outputs,
    one row per input row, in the rows' order.

    ``sequences`` gives each row's sequence id (None: all rows are one sequence); a
    sequence's rows run in their order, each step with the carry of the one before. Step
    ``t`` of every sequence that has one runs in one batch (``batch_size`` rows at most), as
    the server batches concurrent streams.
    """
    count = len(next(iter(inputs.values())))
    ids = np.zeros(count, np.int64) if sequences is None else np.asarray(sequences)
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    order = np.argsort(first)  # sequences in the order they first appear
    rows = [np.flatnonzero(inverse == group) for group in order]
    carries = [stepper.start() for _ in rows]
    out: Arrays = {}
    for step in range(max(len(r) for r in rows)):
        active = [i for i, r in enumerate(rows) if step < len(r)]
        for begin in range(0, len(active), batch_size):
            group = active[begin : begin + batch_size]
            picked = [int(rows[i][step]) for i in group]
            steps = [{name: inputs[name][p : p + 1] for name in inputs} for p in picked]
            feeds = stepper.feeds(steps, [carries[i] for i in group])
            outputs = session.run(feeds)
            new, answers = stepper.advance(feeds, outputs)
            for i, carry in zip(group, new, strict=True):
                carries[i] = carry
            for p, answer in zip(picked, answers, strict=True):
                for name, value in answer.items():
                    if name not in out:
                        out[name] = np.empty((count, *value.shape[1:]), value.dtype)
                    out[name][p] = value[0]
    return out


__all__ = [
    "Carry",
    "ContextConfig",
    "SequenceConfig",
    "StateConfig",
    "Stepper",
    "run_sequences",
]

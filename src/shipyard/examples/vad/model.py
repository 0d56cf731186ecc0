"""Silero VAD 6.2.3 (MIT) as shipped in the ``silero-vad`` wheel, read by path.

``original()`` is the wheel's TorchScript model as silero ships it: ``model(chunk, 16000)``
keeps the 64-sample context and the LSTM state inside the module, one stream at a time.

``silero()`` is its 16 kHz network as a plain ``nn.Module`` with the file's own weights
(``load_state_dict(strict=True)`` of the TorchScript network's): ``forward(input [batch, 576],
state [2, batch, 128]) -> (probability [batch, 1], stateN [2, batch, 128])``, where ``input``
is a 512-sample chunk after the previous chunk's last 64 samples. The caller carries context
and state (``shipyard.stateful``), so streams can share a batch. It computes what the
TorchScript network computes, layer for layer (the example's tests compare the two on the
sample chunk by chunk); it exists because the scripted network exports only through the
TorchScript exporter, whose graph keeps the LSTM cell's rank checks as ``If`` nodes, and ONNX
Runtime's quantizer then writes an LSTM graph that ``onnx.checker`` refuses ("not
topologically sorted"). This one exports with ``torch.export`` into plain operators.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from shipyard.errors import SourceError

#: The model's sample rate, chunk and context (samples).
SAMPLE_RATE, CHUNK, CONTEXT = 16_000, 512, 64


def model_path() -> Path:
    """``silero_vad/data/silero_vad.jit`` in the installed wheel; SourceError naming the
    install command when it is missing. The package is located, never imported."""
    spec = importlib.util.find_spec("silero_vad")
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / "data" / "silero_vad.jit" if locations else None
    if path is None or not path.is_file():
        raise SourceError(
            "Silero VAD comes from the silero-vad wheel, which is not installed: "
            "pip install 'shipyard[vad]' (silero-vad==6.2.3; it needs only torch)"
        )
    return path


def original() -> torch.jit.ScriptModule:
    """The wheel's TorchScript model as silero ships it: ``model(chunk [1, 512], 16000)``
    returns the speech probability and keeps context and state itself
    (``model.reset_states()`` starts a new stream)."""
    model = torch.jit.load(str(model_path()), map_location="cpu")
    model.eval()
    return model


class _Block(nn.Module):
    """Conv1d (kernel 3, padding 1) + ReLU; silero's ``SileroVadBlock`` (its SE is Identity)."""

    def __init__(self, channels: int, out: int, stride: int) -> None:
        super().__init__()
        self.reparam_conv = nn.Conv1d(channels, out, 3, stride=stride, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.reparam_conv(x))


class _Stft(nn.Module):
    """Magnitudes of a 256-point STFT, hop 128, as a convolution with a fixed basis."""

    def __init__(self) -> None:
        super().__init__()
        self.forward_basis_buffer: torch.Tensor
        self.register_buffer("forward_basis_buffer", torch.zeros(258, 1, 256))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = nn.functional.pad(x, (0, 64), mode="reflect").unsqueeze(1)
        spectrum = nn.functional.conv1d(padded, self.forward_basis_buffer, stride=128)
        real, imag = spectrum[:, :129], spectrum[:, 129:]
        return torch.sqrt(real**2 + imag**2)


class _Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTMCell(128, 128)
        # silero's indices: 0 Dropout and 1 ReLU hold no weights; 2 is the 1x1 conv
        self.decoder = nn.Sequential(nn.Dropout(0.1), nn.ReLU(), nn.Conv1d(128, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = self.rnn(x.squeeze(-1), (state[0], state[1]))
        return self.decoder(h.unsqueeze(-1)), torch.stack([h, c])


class SileroVad(nn.Module):
    """Silero VAD's 16 kHz network, one chunk per call, state in and out."""

    def __init__(self) -> None:
        super().__init__()
        self.stft = _Stft()
        self.encoder = nn.Sequential(
            _Block(129, 128, 1), _Block(128, 64, 2), _Block(64, 64, 2), _Block(64, 128, 1)
        )
        self.decoder = _Decoder()

    def forward(
        self, input: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, state = self.decoder(self.encoder(self.stft(input)), state)
        return x.squeeze(1).mean(dim=1, keepdim=True), state


def silero() -> SileroVad:
    """:class:`SileroVad` with the weights of the wheel's TorchScript network, in eval mode."""
    model = SileroVad()
    model.load_state_dict(original()._model.state_dict(), strict=True)
    return model.eval()


__all__ = ["CHUNK", "CONTEXT", "SAMPLE_RATE", "SileroVad", "model_path", "original", "silero"]

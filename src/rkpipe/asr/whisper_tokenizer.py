"""The multilingual Whisper tokenizer, built offline from openai-whisper's tiktoken file
(random-weight Whisper models need one, and no hub is reachable)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from rkpipe.errors import AsrError

# Whisper's multilingual vocabulary: 50257 byte-level BPE ranks, then these specials.
VOCAB_SIZE = 51865
N_LANGUAGES = 99  # whisper v1/v2 (tiny ... large-v2); large-v3 adds "yue" (51866 ids)
EOT_ID = 50257
SOT_ID = 50258
TRANSLATE_ID = 50358
TRANSCRIBE_ID = 50359
NO_TIMESTAMPS_ID = 50363
# GPT-2 split pattern, as openai-whisper's tokenizer uses.
WHISPER_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _whisper_dir() -> Path:
    """The installed ``whisper`` package directory, found without importing it (it needs torch)."""
    from rkpipe.data_wheels import install_command, package_dir

    directory = package_dir("whisper")
    if directory is None:
        raise AsrError(
            "the offline Whisper tokenizer needs the tiktoken file of the openai-whisper package; "
            f"install it with: {install_command('openai-whisper')}"
        )
    return directory


def whisper_version() -> str:
    from rkpipe.data_wheels import distribution_version

    return distribution_version("openai-whisper")


def load_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """Read a ``.tiktoken`` file (``base64(token) rank`` per line) into ``{bytes: rank}``."""
    ranks: dict[bytes, int] = {}
    for line in path.read_text(encoding="ascii").splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def whisper_special_tokens() -> tuple[list[str], list[str]]:
    """(control specials from 50257 to 50363, timestamp tokens ``<|0.00|>``..``<|30.00|>``)."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    specials = [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *[f"<|{code}|>" for code in list(LANGUAGES)[:N_LANGUAGES]],
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
    ]
    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    return specials, timestamps


def build_whisper_tokenizer(tiktoken_file: Path | None = None) -> Any:
    """Whisper's multilingual ``WhisperTokenizerFast`` (51865 ids) built offline.

    ``tiktoken_file`` defaults to ``multilingual.tiktoken`` of the installed ``openai-whisper``
    package. Byte-level BPE ranks become vocab + merges (transformers' ``TikTokenConverter``
    logic, reading the file without the ``tiktoken`` package); the specials follow at 50257..50363
    and the timestamps at 50364..51864. Raises :class:`AsrError` if the file cannot be found or
    the ids come out wrong.
    """
    from tokenizers import AddedToken
    from transformers import WhisperTokenizerFast

    from rkpipe.data_wheels import install_command

    path = tiktoken_file or _whisper_dir() / "assets" / "multilingual.tiktoken"
    if not Path(path).is_file():
        raise AsrError(f"tiktoken file {path} not found; {install_command('openai-whisper')}")
    specials, timestamps = whisper_special_tokens()
    converter = _ranks_converter()(load_tiktoken_ranks(Path(path)), specials)
    backend = converter.converted()
    backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in timestamps])
    tokenizer = WhisperTokenizerFast(
        tokenizer_object=backend,
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=specials[1:],
        model_max_length=1024,
        errors="replace",
    )
    _check_tokenizer(tokenizer)
    return tokenizer


def _ranks_converter() -> type:
    """A ``TikTokenConverter`` fed with ranks already read (no ``tiktoken`` import)."""
    from transformers.convert_slow_tokenizer import TikTokenConverter, bytes_to_unicode

    byte_encoder = bytes_to_unicode()

    def to_str(token: bytes) -> str:
        return "".join(byte_encoder[b] for b in token)

    class RanksConverter(TikTokenConverter):
        def __init__(self, ranks: dict[bytes, int], specials: list[str]) -> None:
            super().__init__(pattern=WHISPER_PATTERN, additional_special_tokens=specials)
            self.ranks = ranks

        def extract_vocab_merges_from_model(self, tiktoken_url: Any):
            ranks = self.ranks
            vocab = {to_str(token): rank for token, rank in ranks.items()}
            merges = []
            for token, rank in ranks.items():
                local = [
                    (token[:i], token[i:], rank)
                    for i in range(1, len(token))
                    if token[:i] in ranks and token[i:] in ranks
                ]
                merges.extend(sorted(local, key=lambda m: (ranks[m[0]], ranks[m[1]])))
            merges.sort(key=lambda m: m[2])
            return vocab, [(to_str(left), to_str(right)) for left, right, _ in merges]

    return RanksConverter


def _check_tokenizer(tokenizer: Any) -> None:
    expected = {
        "<|endoftext|>": EOT_ID,
        "<|startoftranscript|>": SOT_ID,
        "<|en|>": 50259,
        "<|translate|>": TRANSLATE_ID,
        "<|transcribe|>": TRANSCRIBE_ID,
        "<|notimestamps|>": NO_TIMESTAMPS_ID,
        "<|0.00|>": 50364,
        "<|30.00|>": VOCAB_SIZE - 1,
    }
    got = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in expected}
    if got != expected or len(tokenizer) != VOCAB_SIZE:
        raise AsrError(f"offline Whisper tokenizer ids are wrong: expected {expected}, got {got}")


def load_whisper_tokenizer(model_dir: Path) -> Any:
    """The Whisper tokenizer saved in ``model_dir``; raises :class:`AsrError` naming the dir."""
    from transformers import WhisperTokenizerFast

    try:
        return WhisperTokenizerFast.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise AsrError(f"cannot load the Whisper tokenizer from {model_dir}: {exc}") from exc


def tokenizer_from_ct2(ct2_dir: Path, vocab_size: int) -> Any:
    """The ``WhisperTokenizerFast`` of a CTranslate2 Whisper directory (faster-whisper layout).

    ``tokenizer.json`` there lacks the timestamp tokens, which HF's Whisper tokenizers carry as
    (non-special) added tokens: they are appended from ``vocabulary.txt`` (one token per id,
    CTranslate2's ground truth), then every id is checked against that file. Raises
    :class:`AsrError` naming the file when the sizes or ids disagree.
    """
    from tokenizers import AddedToken
    from transformers import WhisperTokenizerFast

    ct2_dir = Path(ct2_dir)
    tokenizer = WhisperTokenizerFast(
        tokenizer_file=str(ct2_dir / "tokenizer.json"),
        **dict.fromkeys(("unk_token", "bos_token", "eos_token", "pad_token"), "<|endoftext|>"),
    )
    vocabulary = _ct2_vocabulary(ct2_dir, vocab_size)
    extra = vocabulary[len(tokenizer) :]
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in extra])
    ids = tokenizer.convert_tokens_to_ids(vocabulary)
    wrong = [(i, t, j) for i, (t, j) in enumerate(zip(vocabulary, ids, strict=True)) if i != j]
    if wrong or len(tokenizer) != vocab_size:
        raise AsrError(
            f"{ct2_dir / 'tokenizer.json'}: ids disagree with vocabulary.txt (token, id) e.g. "
            f"{wrong[:3]}, size {len(tokenizer)} vs {vocab_size}; the files belong to two models"
        )
    # control tokens (<|startoftranscript|>, ...) are skipped when decoding with skip_special
    added = tokenizer.backend_tokenizer.get_added_tokens_decoder().values()
    specials = [t.content for t in added if t.special and t.content != "<|endoftext|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    return tokenizer


def _ct2_vocabulary(ct2_dir: Path, vocab_size: int) -> list[str]:
    """``vocabulary.txt``, or the tokenizer's tokens plus generated timestamps without it."""
    path = ct2_dir / "vocabulary.txt"
    if path.is_file():
        return read_vocabulary_txt(path)
    from transformers import PreTrainedTokenizerFast

    base = PreTrainedTokenizerFast(tokenizer_file=str(ct2_dir / "tokenizer.json"))
    tokens = base.convert_ids_to_tokens(list(range(len(base))))
    _, timestamps = whisper_special_tokens()
    return [*tokens, *timestamps][:vocab_size]


def read_vocabulary_txt(path: Path) -> list[str]:
    """CTranslate2's ``vocabulary.txt``: one token per line, line i is id i (byte-level BPE
    tokens hold no raw newline, so splitting on it is exact)."""
    text = Path(path).read_text(encoding="utf-8")
    return text[:-1].split("\n") if text.endswith("\n") else text.split("\n")

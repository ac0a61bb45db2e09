"""Tokenizers: characters, WordPiece learnt from the corpus (deterministically) or read from a vocab.txt, and the
tokenizer a pretrained model brings (its folder's tokenizer.json, a GGUF file's) for fine-tuning, evaluating and
training it further."""

from __future__ import annotations

import hashlib
import heapq
import importlib.util
import json
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sharebench.errors import WITHOUT_THE_HUB, ConfigError
from sharebench.paths import atomic_write_bytes, atomic_write_json, resolve_path

if TYPE_CHECKING:
    from sharebench.run.spec import Tokenizer as TokenizerSettings

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CHARS_FILE = "chars.json"  # a character tokenizer's vocabulary, in a run's folder
# What a checkpoint folder holds of its tokenizer (copied along by conversions).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json", CHARS_FILE)


class CharTokenizer:
    """Characters as tokens, vocabulary sorted as in nanoGPT; special tokens follow when the objective needs them."""

    def __init__(self, chars: str, special_tokens: tuple[str, ...]) -> None:
        self.chars = chars
        self.vocab = {c: i for i, c in enumerate(chars)}
        self.vocab.update({t: len(chars) + i for i, t in enumerate(special_tokens)})
        self.vocab_size = len(self.vocab)

    def token_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        try:
            return [[self.vocab[c] for c in text] for text in texts]
        except KeyError as missing:  # a run's characters read with other text (data.tokenizer.kind=pretrained)
            raise ConfigError(f"the character {missing.args[0]!r} has no token in this vocabulary of "
                              f"{len(self.chars)} characters, learnt from other text; use data that it covers "
                              f"(the run's own) or another tokenizer") from None  # fmt: skip

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] if i < len(self.chars) else "" for i in ids)

    @property
    def separator_id(self) -> int | None:
        """The token between documents in a token stream (none for a causal character model)."""
        return self.token_id("[SEP]")

    def save(self, folder: Path) -> None:
        special = [t for t in self.vocab if t not in self.chars]
        atomic_write_json(folder / CHARS_FILE, {"chars": self.chars, "special_tokens": special})

    def describe(self) -> dict[str, Any]:
        """What the run record keeps: the vocabulary's size and a hash of it."""
        return {"kind": "char", "vocab_size": self.vocab_size, "sha256": _sha256(json.dumps(self.vocab))}


class SubwordTokenizer:
    """A `tokenizers` tokenizer, no special tokens added: a WordPiece vocabulary (BERT normalisation and
    pre-tokenisation), or whatever a pretrained model brings (Llama's byte-level BPE). Documents in a token stream
    are separated by `separator` (a checkpoint's end-of-text token), else by [SEP] where the vocabulary has it."""

    def __init__(self, tokenizer: Any, vocab_size: int, separator: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.separator = separator

    def token_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # Without offsets: tokenising the corpus took half a gigabyte more memory with them, kept after.
        return [e.ids for e in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    @property
    def separator_id(self) -> int | None:
        return self.token_id(self.separator or "[SEP]")

    def save(self, folder: Path) -> None:  # fine-tuning, generation and further training tokenise with it
        atomic_write_bytes(folder / "tokenizer.json", self.tokenizer.to_str().encode())
        if self.separator:
            atomic_write_json(folder / "tokenizer_config.json", {"eos_token": self.separator})

    def describe(self) -> dict[str, Any]:
        """What the run record keeps: the tokenizer's model (wordpiece, bpe, ...), the vocabulary's size and a
        hash of the whole tokenizer (tokenizer.json)."""
        kind = json.loads(self.tokenizer.to_str())["model"]["type"].lower()
        return {"kind": kind, "vocab_size": self.vocab_size, "sha256": _sha256(self.tokenizer.to_str())}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def wordpiece_pipeline(model: Any, lowercase: bool) -> Any:
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers

    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


# The vocabulary of data.tokenizer.kind=vocab_file when no path is given: bert-base-uncased's, from the hub.
HUB_VOCAB = ("google-bert/bert-base-uncased", "vocab.txt")


def vocab_file_path(spec: TokenizerSettings) -> Path:
    if not spec.path:
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(*HUB_VOCAB))
        except Exception as error:  # offline, unreachable, ...
            raise ConfigError(
                f"data.tokenizer.path=null reads {'/'.join(HUB_VOCAB)} from the hub, which failed "
                f"({type(error).__name__}); set data.tokenizer.path to a WordPiece vocab.txt, or {WITHOUT_THE_HUB}"
            ) from None
    path = resolve_path(spec.path)
    if not path.is_file():
        raise ConfigError(f"data.tokenizer.path: vocabulary file {path} not found; a WordPiece vocab.txt is needed")
    return path


def merge_pieces(words: Counter[str], size: int) -> list[str]:
    """WordPiece's vocabulary as `tokenizers` learns it (byte-pair merges of characters, "##" marking a piece
    inside a word, most frequent pair first) up to `size` pieces, but deterministic: ties go to the smallest pair
    and pieces are numbered in the order they are learnt, where `tokenizers` follows hash order."""
    types = sorted(words)
    counts = [words[w] for w in types]
    symbols = [[w[0], *("##" + c for c in w[1:])] for w in types]
    pieces = sorted({s for word in symbols for s in word})
    known = set(pieces)
    pair_counts: Counter[tuple[str, str]] = Counter()
    holders: dict[tuple[str, str], set[int]] = defaultdict(set)  # the words a pair occurs in
    for index, word in enumerate(symbols):
        for pair in pairwise(word):
            pair_counts[pair] += counts[index]
            holders[pair].add(index)
    queue = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(queue)
    while len(pieces) < size and queue:
        negative_count, pair = heapq.heappop(queue)
        if pair_counts.get(pair) != -negative_count:  # an outdated entry
            continue
        first, second = pair
        merged = first + second[2:]
        if merged not in known:
            known.add(merged)
            pieces.append(merged)
        changes: Counter[tuple[str, str]] = Counter()
        for index in holders.pop(pair):
            word, count = symbols[index], counts[index]
            for p in pairwise(word):
                changes[p] -= count
            joined, position = [], 0
            while position < len(word):
                if word[position : position + 2] == [first, second]:
                    joined.append(merged)
                    position += 2
                else:
                    joined.append(word[position])
                    position += 1
            symbols[index] = joined
            for p in pairwise(joined):
                changes[p] += count
                holders[p].add(index)
        del pair_counts[pair]
        for p, change in changes.items():
            if change and p != pair:
                pair_counts[p] += change
                if pair_counts[p] > 0:
                    heapq.heappush(queue, (-pair_counts[p], p))
    return pieces


def train_wordpiece(documents: list[str], vocab_size: int, lowercase: bool) -> Any:
    """A WordPiece tokenizer learnt from the documents: the same bytes from the same text, every time."""
    from tokenizers.models import WordPiece

    splitter = wordpiece_pipeline(WordPiece(unk_token="[UNK]"), lowercase)
    words: Counter[str] = Counter()
    for text in documents:
        normalized = splitter.normalizer.normalize_str(text)
        words.update(word for word, _ in splitter.pre_tokenizer.pre_tokenize_str(normalized))
    pieces = merge_pieces(words, vocab_size - len(SPECIAL_TOKENS))
    vocab = {piece: index for index, piece in enumerate([*SPECIAL_TOKENS, *pieces])}
    return wordpiece_pipeline(WordPiece(vocab, unk_token="[UNK]"), lowercase)


def folder_wordpiece(folder: Path) -> Any:
    """The `tokenizers` WordPiece tokenizer a checkpoint folder holds (tokenizer.json, else vocab.txt), or None."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece

    if (folder / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(folder / "tokenizer.json"))
    if (folder / "vocab.txt").is_file():
        settings = folder / "tokenizer_config.json"
        lowercase = json.loads(settings.read_text()).get("do_lower_case", True) if settings.is_file() else True
        return wordpiece_pipeline(WordPiece.from_file(str(folder / "vocab.txt"), unk_token="[UNK]"), lowercase)
    return None


def load_pretrained_tokenizer(folder: Path, max_length: int, vocab_size: int) -> Any:
    """The pretrained model's WordPiece tokenizer, adding [CLS] a [SEP] (b [SEP]) with token types, truncated."""
    from tokenizers.processors import TemplateProcessing

    tokenizer = folder_wordpiece(folder)
    if tokenizer is None:
        raise ConfigError(
            f"pretrained: {folder} has no tokenizer.json or vocab.txt (a character-level run cannot do GLUE)"
        )
    if tokenizer.get_vocab_size() > vocab_size:
        raise ConfigError(
            f"pretrained: the tokenizer in {folder} has {tokenizer.get_vocab_size()} tokens, "
            f"more than the model's {vocab_size} embeddings"
        )
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if cls is None or sep is None:
        raise ConfigError(f"pretrained: the tokenizer in {folder} has no [CLS]/[SEP] tokens")
    tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer.enable_truncation(max_length)
    tokenizer.no_padding()
    return tokenizer


def load_run_tokenizer(folder: Path) -> CharTokenizer | SubwordTokenizer:
    """The tokenizer a run's (or checkpoint's) folder holds: its characters, its tokenizer.json or a vocab.txt;
    or a GGUF file's (through transformers' GGUF reader). A checkpoint's end-of-text token (tokenizer_config.json's
    `eos_token`) separates documents."""
    if folder.suffix == ".gguf" and folder.is_file():
        return gguf_tokenizer(folder)
    if (folder / CHARS_FILE).is_file():
        saved = json.loads((folder / CHARS_FILE).read_text())
        return CharTokenizer(saved["chars"], tuple(saved["special_tokens"]))
    tokenizer = folder_wordpiece(folder)
    if tokenizer is None:
        raise ConfigError(f"{folder} holds no tokenizer ({', '.join(TOKENIZER_FILES)})")
    return SubwordTokenizer(tokenizer, tokenizer.get_vocab_size(), end_of_text(folder))


def end_of_text(folder: Path) -> str | None:
    """The end-of-text token a Hugging Face folder names (tokenizer_config.json, else special_tokens_map.json)."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (folder / name).is_file() and (token := json.loads((folder / name).read_text()).get("eos_token")):
            return token["content"] if isinstance(token, dict) else token
    return None


GGUF_EXTRA = "pip install 'sharebench[llama]'"  # what reads GGUF files


def require_gguf(path: Path) -> None:
    """A ConfigError naming the install where what reads GGUF files is missing."""
    missing = [package for package in ("gguf", "transformers") if importlib.util.find_spec(package) is None]
    if missing:
        raise ConfigError(f"pretrained: reading {path.name} needs {' and '.join(missing)}: {GGUF_EXTRA}")


def gguf_tokenizer(path: Path) -> SubwordTokenizer:
    """The tokenizer a GGUF file holds, as transformers rebuilds it."""
    require_gguf(path)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return SubwordTokenizer(tokenizer.backend_tokenizer, len(tokenizer), tokenizer.eos_token)

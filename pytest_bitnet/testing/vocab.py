"""A deterministic SentencePiece-style ("llama" / SPM) vocabulary for
generated test models.

Layout of ``build_spm_vocab(n)``:

* 0 ``<unk>`` (UNKNOWN), 1 ``<s>`` and 2 ``</s>`` (CONTROL), then the chat
  markers ``<|system|>``, ``<|user|>``, ``<|assistant|>`` (CONTROL) and
  ``<|tool|>`` (USER_DEFINED);
* the 256 byte tokens ``<0x00>`` .. ``<0xFF>`` (BYTE);
* ``▁`` (U+2581, the escaped space) and single characters, most useful
  first: lower-case letters by English frequency, upper case, digits,
  punctuation, a few Latin-1 letters and CJK characters;
* pieces merged BPE-style from the small English corpus below (most
  frequent adjacent pair first, words prefixed with ``▁``), then ``▁`` plus
  each Latin letter, then synthetic merges of existing pieces drawn with
  ``random.Random(seed)`` until the vocabulary is full.

Every multi-character normal piece is the concatenation of two pieces that
come before it, so SentencePiece's bigram merging can reach it.  Scores
follow SentencePiece BPE models: the i-th merge scores ``-i`` and single
characters score below every merge.  A vocabulary smaller than the fixed
part (specials, byte tokens and ``▁``) raises ValueError; characters that
do not fit are left out (their text then tokenizes to byte tokens).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass

# llama.cpp's llama_token_type
NORMAL = 1
UNKNOWN = 2
CONTROL = 3
USER_DEFINED = 4
BYTE = 6

SPACE = "\u2581"

_SPECIALS: tuple[tuple[str, int], ...] = (
    ("<unk>", UNKNOWN),
    ("<s>", CONTROL),
    ("</s>", CONTROL),
    ("<|system|>", CONTROL),
    ("<|user|>", CONTROL),
    ("<|assistant|>", CONTROL),
    ("<|tool|>", USER_DEFINED),
)

_CHARS: str = (
    "etaoinshrdlcumwfgypbvkjxqz"
    "TAISOWHBCMFPDRLNEGUVYJKQXZ"
    "0123456789"
    ".,'-!?;:\"()"
    "#$%&*+/<=>@[\\]^_`{|}~"
    "éèàüöäñçøß"
    "中文日本"
)

_CORPUS = """
The river runs through the old town before it reaches the sea. In the
morning the water is calm and clear, and people walk along the stone path
to the market. The market opens early, and the first traders bring bread,
fish, apples and flowers. Children run between the stalls while their
parents talk about the weather, the price of bread and the news of the day.

A small library stands on the corner of the main square. It was built more
than a hundred years ago, and the building still has its original wooden
doors. Inside there are thousands of books about history, science, music
and the sea. Students come in the afternoon to read and to write, and the
librarian knows the name of every regular visitor. She says that a good
book is like a good friend: it is always there when you need it.

Computers have changed the way we read and write. A program reads the text,
splits it into small pieces called tokens, and turns each token into a
number. The model then looks at the numbers and predicts the next token.
When the prediction is good, the text that comes out reads as if a person
had written it. Testing such a program is important, because a single
wrong number can change the meaning of the whole sentence.

In the evening the town becomes quiet again. The lights of the houses are
reflected in the river, and the last boats return to the harbour. Some
people sit outside and watch the stars, while others stay at home and read
a book or listen to music. Tomorrow the market will open again, the
students will return to the library, and the river will keep running to
the sea, as it has done for a very long time.
"""

_MAX_SYNTHETIC_CHARS = 12


@dataclass(frozen=True)
class SpmVocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    bos_id: int
    eos_id: int
    unk_id: int


def _corpus_merges(alphabet: set[str]) -> list[tuple[str, str]]:
    """BPE merges learnt from _CORPUS: most frequent adjacent pair first
    (ties by the pair's text), only pairs seen at least twice.  Characters
    outside alphabet never merge."""
    word_freq = Counter(SPACE + w for w in _CORPUS.split())
    words = [list(w) for w in word_freq]
    freqs = [word_freq[w] for w in word_freq]

    pair_count: Counter[tuple[str, str]] = Counter()
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)

    def count(i: int, sign: int) -> None:
        syms = words[i]
        for a, b in zip(syms, syms[1:]):
            if a in alphabet and b in alphabet:
                pair_count[(a, b)] += sign * freqs[i]
                if sign > 0:
                    where[(a, b)].add(i)

    for i in range(len(words)):
        count(i, 1)

    merges: list[tuple[str, str]] = []
    while pair_count:
        pair, n = min(pair_count.items(), key=lambda kv: (-kv[1], kv[0]))
        if n < 2:
            break
        merges.append(pair)
        merged = pair[0] + pair[1]
        alphabet.add(merged)
        for i in sorted(where.pop(pair, ())):
            count(i, -1)
            syms, out, k = words[i], [], 0
            while k < len(syms):
                if k + 1 < len(syms) and (syms[k], syms[k + 1]) == pair:
                    out.append(merged)
                    k += 2
                else:
                    out.append(syms[k])
                    k += 1
            words[i] = out
            count(i, 1)
        for p in [p for p, c in pair_count.items() if c <= 0]:
            del pair_count[p]
    return merges


def build_spm_vocab(n_vocab: int, *, seed: int = 0) -> SpmVocab:
    """The first n_vocab tokens of the layout described in the module."""
    fixed = len(_SPECIALS) + 256 + 1
    if n_vocab < fixed:
        raise ValueError(
            f"n_vocab={n_vocab} is too small: the special tokens, 256 byte "
            f"tokens and '{SPACE}' need {fixed}; use n_vocab >= {fixed}"
        )
    tokens = [t for t, _ in _SPECIALS] + [f"<0x{b:02X}>" for b in range(256)]
    types = [k for _, k in _SPECIALS] + [BYTE] * 256
    chars = [SPACE, *_CHARS][: n_vocab - len(tokens)]
    pieces: list[str] = []  # merged pieces, in merge order
    seen = set(tokens) | set(chars)

    def add(piece: str) -> None:
        if piece not in seen:
            seen.add(piece)
            pieces.append(piece)

    room = n_vocab - len(tokens) - len(chars)
    for a, b in _corpus_merges(set(chars)):
        if len(pieces) >= room:
            break
        add(a + b)
    # every letter can start a word
    for c in chars:
        if len(pieces) < room and c.isalpha() and c < "\u0250":
            add(SPACE + c)

    # Synthetic merges: a word-like piece (letters, perhaps after "▁")
    # followed by a short piece from inside a word; earlier (more frequent)
    # pieces are drawn more often.
    rng = random.Random(seed)

    def wordy(p: str) -> bool:  # Latin letters, perhaps after "▁"
        w = p.lstrip(SPACE)
        return w.isalpha() and max(w) < "\u0250"

    def inner(p: str) -> bool:  # short, lower case, not starting a word
        return len(p) <= 3 and p.islower() and SPACE not in p

    heads = [p for p in chars + pieces if wordy(p)]
    tails = [p for p in heads if inner(p)]
    while len(pieces) < room:
        a = heads[int(len(heads) * rng.random() ** 2)]
        b = tails[int(len(tails) * rng.random() ** 2)]
        piece = a + b
        if len(piece) <= _MAX_SYNTHETIC_CHARS and piece not in seen:
            add(piece)
            heads.append(piece)
            if inner(piece):
                tails.append(piece)

    n_merges = len(pieces)
    scores = [0.0] * len(tokens)
    scores += [float(-(n_merges + i)) for i in range(len(chars))]
    scores += [float(-i) for i in range(n_merges)]
    tokens += chars + pieces
    types += [NORMAL] * (len(chars) + n_merges)
    return SpmVocab(tokens, scores, types, bos_id=1, eos_id=2, unk_id=0)

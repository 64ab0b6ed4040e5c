"""Answer normalisation and matching: the one place answers are compared.

Everything that decides whether an answer is right goes through this module: the graph (option
matching, votes), the rewards the trainer optimises, the benchmark loaders (gold yes/no, gold
option) and the evaluation report (closed accuracy; exact match, token recall and token F1 for open
questions). The rules, in the order they apply:

- Unicode: NFKC (full-width forms, ``㎝`` -> ``cm``), case-folded, accents dropped from Latin letters
  (``Ménétrier`` = ``menetrier``); CJK ideographs and kana are one token each (character-level
  tokens for F1/recall, the SLAKE-zh convention), so spacing between them does not matter.
- Punctuation and the articles *a*, *an*, *the* do not matter; negation does (``no effusion`` is
  not ``effusion``, nor does it name the option ``Effusion``; token F1/recall of a prediction of
  the opposite polarity are 0). A leading ``Answer:`` / ``The answer is`` / ``答案：`` is dropped.
- Numbers keep their digits and decimals: ``4.0 cm`` = ``4cm`` = ``4 cm`` = ``four centimetres``,
  ``1,000`` = ``1000``, ``50%`` = ``50 percent``; ``T1`` is not ``T2``, ``C5`` not ``C6``, ``2`` not
  ``12``. Roman numerals after *stage*, *grade*, *type*... are numbers (``stage II`` = ``stage 2``,
  not ``stage 3``).
- Yes/no: when the options are yes/no (or a closed question's gold is a bare yes/no word), an
  answer counts by its polarity: ``Yes, there is``, ``present``, ``是`` are yes; ``no evidence of``,
  ``absent``, ``否``, ``没有`` are no.
- Options: a letter in any form a model writes (``B``, ``(b)``, ``B.``, ``Option B``, ``answer: B``,
  ``**B**``, ``B) Nodule``), the option's text, a bare number naming one option's value (``4`` for
  ``4 cm``), or text that names exactly one option (and is not a negation of it).

:data:`SCORER_VERSION` changes whenever these rules change; reports record it, and reports scored
by different versions are not compared.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Literal

YesNo = Literal["yes", "no"]

SCORER_VERSION = 2

_CJK = "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(
    rf"(?P<cjk>[{_CJK}])"
    rf"|(?P<num>\d+(?:\.\d+)?|\.\d+)(?P<suffix>(?:(?![{_CJK}])[^\W\d_])*)"
    rf"|(?P<word>(?:(?![{_CJK}])[^\W_])+)"
)
_HAS_CJK = re.compile(f"[{_CJK}]")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_LEAD = r"(?:the\s+)?(?:(?:correct|final|best|right)\s+)*(?:answer|choice|option)"
_PREAMBLE = re.compile(
    rf"^\s*(?:{_LEAD}\s*(?:is|would\s+be)\s*[:：]?\s*(?:option\s*)?"  # "the answer is (option) B"
    rf"|{_LEAD}\s*[:：\-]\s*(?:option\s*)?"  # "Answer: 4 cm", "Final answer - C"
    r"|option\s*(?=[(\[]?[a-z]\s*(?:[)\].:：,;]|$))"  # "Option B", "option (b)"
    r"|(?:正确)?(?:答案|选项)\s*(?:是|为)?\s*[:：]?\s*)",  # "答案：是"
    re.I,
)
_MARKUP = re.compile(r"[*_`]+")
_LETTER = re.compile(r"^[(\[]?([A-Za-z])\s*(?:[)\].:：,;]|\s+[-–—]\s|$)")
_OPTION = re.compile(r"^\s*\(?([A-Za-z])\s*[).:\]]\s*(.*)$")

_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate((
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
        "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
    ))
}  # fmt: skip
_UNITS = {
    "cm": "cm", "cms": "cm", "centimeter": "cm", "centimeters": "cm", "centimetre": "cm", "centimetres": "cm",
    "mm": "mm", "millimeter": "mm", "millimeters": "mm", "millimetre": "mm", "millimetres": "mm",
    "ml": "ml", "milliliter": "ml", "milliliters": "ml", "millilitre": "ml", "millilitres": "ml",
    "mg": "mg", "milligram": "mg", "milligrams": "mg", "kg": "kg", "kilogram": "kg", "kilograms": "kg",
    "percent": "percent", "pct": "percent", "hu": "hu", "bpm": "bpm", "mmhg": "mmhg",
}  # fmt: skip
_ROMAN_AFTER = frozenset({"stage", "grade", "type", "class", "phase", "level", "tier", "cn", "nerve", "lobe"})
_ROMAN = {
    r: str(i)
    for i, r in enumerate(("i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix", "x", "xi", "xii"), 1)
}
_ROMAN_TOKEN = re.compile(r"^(x?i{1,3}|x?iv|x?vi{0,3}|x?ix|x)([a-c]?)$")
# "a" is kept where it is a label ("vitamin a", "type a"): dropped only at the start or after these.
_A_DROPS_AFTER = frozenset((
    "is", "are", "was", "were", "be", "of", "in", "on", "at", "by", "for", "from", "with", "to", "as", "and",
    "or", "not", "no", "there", "this", "that", "it", "shows", "show", "showing", "seen", "see", "has",
    "have", "had", "contains", "reveals", "demonstrates", "likely",
))  # fmt: skip
_NEGATIONS = frozenset((
    "no", "not", "without", "absent", "negative", "none", "neither", "nor", "never", "non",
    "无", "没", "不", "非", "未", "否",
))  # fmt: skip

_YES_WORDS = frozenset({"yes", "yeah", "yep", "true", "correct", "positive", "affirmative", "present"})
_NO_WORDS = frozenset({"no", "nope", "false", "incorrect", "negative", "absent", "none"})
_NO_PHRASES = re.compile(
    r"\b(?:there\s+(?:is|are)\s+no|no\s+(?:evidence|sign|signs)|not\s+(?:seen|present|visible|identified|"
    r"detected|shown|evident|demonstrated)|absent|negative\s+for|without)\b"
)
_YES_PHRASES = re.compile(r"\b(?:there\s+(?:is|are)|present|positive\s+for|is\s+seen|are\s+seen|visible)\b")
_ZH_NO = ("不是", "否", "没有", "无", "不", "未见")
_ZH_YES = ("是", "有", "对", "存在")


# --- normalising --------------------------------------------------------------------------------


def _fold(text: str) -> str:
    """NFKC, case-folded, accents dropped from Latin letters (kana voicing marks are kept)."""
    text = unicodedata.normalize("NFKC", str(text or "")).casefold()
    out: list[str] = []
    for ch in unicodedata.normalize("NFD", text):
        if unicodedata.combining(ch) and out and out[-1] < "\u0250":
            continue
        out.append(ch)
    return unicodedata.normalize("NFC", "".join(out))


def _number(text: str) -> str:
    """``4.0`` -> ``4``, ``04`` -> ``4``, ``4.50`` -> ``4.5``, ``.5`` -> ``0.5``."""
    whole, _, frac = text.partition(".")
    whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
    return f"{whole}.{frac}" if frac else whole


def strip_preamble(text: str) -> str:
    """``"The answer is B"`` -> ``"B"``; ``"答案：是"`` -> ``"是"``; markdown emphasis removed."""
    text = _MARKUP.sub("", str(text or "")).strip()
    return _PREAMBLE.sub("", text, count=1).strip() or text


def tokens(text: str) -> list[str]:
    """The normalised tokens of an answer (see the module doc); the basis of every comparison."""
    text = _THOUSANDS.sub("", strip_preamble(_fold(text))).replace("%", " percent ")
    out: list[str] = []
    for m in _TOKEN.finditer(text):
        if m.group("cjk"):
            out.append(m.group("cjk"))
        elif m.group("num") is not None:
            out.append(_number(m.group("num")))
            suffix = m.group("suffix")
            if suffix:
                if suffix in _UNITS:
                    out.append(_UNITS[suffix])
                else:
                    out[-1] += suffix  # "3d", "2nd": one token
        else:
            out.extend(_word(m.group("word"), out[-1] if out else None))
    last = len(out) - 1
    return [t for i, t in enumerate(out) if i == last or not _is_article(t, out[i - 1] if i else None)]


def _word(word: str, previous: str | None) -> list[str]:
    if word in _NUMBER_WORDS:
        return [_NUMBER_WORDS[word]]
    if word in _UNITS:
        return [_UNITS[word]]
    if previous in _ROMAN_AFTER and (m := _ROMAN_TOKEN.match(word)) and m.group(1) in _ROMAN:
        return [_ROMAN[m.group(1)] + m.group(2)]
    return [word]


def _is_article(token: str, previous: str | None) -> bool:
    if token in ("the", "an"):
        return True
    return token == "a" and (previous is None or previous in _A_DROPS_AFTER)


def has_cjk(text: str) -> bool:
    """Whether ``text`` has CJK characters (a Chinese or Japanese answer)."""
    return _HAS_CJK.search(text) is not None


def normalize(text: str) -> str:
    """The normalised form of an answer: its tokens joined by spaces."""
    return " ".join(tokens(text))


def is_negated(text: str) -> bool:
    """Whether an answer carries a negation (``no``, ``not``, ``without``, ``无``...)."""
    return any(t in _NEGATIONS for t in tokens(text))


# --- yes / no -----------------------------------------------------------------------------------

# Gold answers that are a bare yes/no (the benchmarks' closed-question convention), normalised.
_YES_NO_GOLD: dict[str, YesNo] = {
    normalize(w): v
    for w, v in {
        "yes": "yes",
        "no": "no",
        "是": "yes",
        "有": "yes",
        "否": "no",
        "没有": "no",
        "无": "no",
    }.items()
}


def yes_no_gold(text: str) -> YesNo | None:
    """``yes``/``no`` when a gold answer is a bare yes/no word (``Yes``, ``no.``, ``是``, ``否``)."""
    return _YES_NO_GOLD.get(normalize(text))


def yes_no(answer: str) -> YesNo | None:
    """The polarity of a model's answer to a yes/no question, or None when it has none.

    The first word decides (``Yes, there is``, ``No, it is normal``); otherwise a negative phrase
    (``no evidence of``, ``absent``, ``not seen``) makes it no, then a positive one (``present``,
    ``there is``) yes. Chinese: a leading ``是``/``有`` or ``否``/``不是``/``没有``/``无``.
    """
    text = strip_preamble(_fold(answer))
    if text.startswith(_ZH_NO):
        return "no"
    if text.startswith(_ZH_YES):
        return "yes"
    words = [t for t in tokens(text) if t]
    if not words:
        return None
    if words[0] in _YES_WORDS:
        return "yes"
    if words[0] in _NO_WORDS:
        return "no"
    plain = " ".join(words)
    if _NO_PHRASES.search(plain):
        return "no"
    if _YES_PHRASES.search(plain):
        return "yes"
    return None


# --- options ------------------------------------------------------------------------------------


def option_letter(option: str) -> str | None:
    """The letter of an option written like ``"B) Nodule"``, else None."""
    m = _OPTION.match(option)
    return m.group(1).upper() if m else None


def option_text(option: str) -> str:
    """The text of an option without its letter: ``"B) Nodule"`` -> ``"Nodule"``."""
    m = _OPTION.match(option)
    return (m.group(2) if m else option).strip()


def option_letters(options: Sequence[str]) -> list[str]:
    """The letters of ``options``; options written without one are lettered A, B, C... by position."""
    return [option_letter(o) or chr(ord("A") + i) for i, o in enumerate(options)]


def _contains(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    n = len(needle)
    return n > 0 and any(list(haystack[i : i + n]) == list(needle) for i in range(len(haystack) - n + 1))


def _without_units(toks: Sequence[str]) -> list[str]:
    return [t for t in toks if t not in _UNITS.values()]


def _is_number(token: str) -> bool:
    return bool(re.fullmatch(r"\d+(?:\.\d+)?", token))


def match_option(answer: str, options: Sequence[str]) -> str | None:
    """The letter of the option an answer names, or None when it names none or several.

    Tried in order: a letter (any form); the option text (normalised); yes/no polarity when the
    options are yes/no; a bare number naming one option's value (``4`` for ``4 cm``); the text of
    exactly one option inside the answer, the most specific one (``no effusion`` over ``effusion``),
    and never an option the answer negates.
    """
    if not options or not str(answer or "").strip():
        return None
    letters = option_letters(options)
    cleaned = strip_preamble(_fold(answer))
    m = _LETTER.match(cleaned)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    got = tokens(cleaned)
    if not got:
        return None
    texts = [tokens(option_text(o)) for o in options]
    exact = [letters[i] for i, t in enumerate(texts) if t and t == got]
    if len(exact) == 1:
        return exact[0]
    polar = [yes_no_gold(option_text(o)) for o in options]
    if all(polar) and len(set(polar)) == len(polar):
        said = yes_no(cleaned)
        return letters[polar.index(said)] if said else None
    if len(got) == 1 and _is_number(got[0]):
        values = [letters[i] for i, t in enumerate(texts) if _without_units(t) == got]
        if len(values) == 1:
            return values[0]
    negated = any(t in _NEGATIONS for t in got)
    named = [
        i
        for i, t in enumerate(texts)
        if _contains(got, t) and not (negated and not any(w in _NEGATIONS for w in t))
    ]
    specific = [i for i in named if not any(j != i and _contains(texts[j], texts[i]) for j in named)]
    return letters[specific[0]] if len(specific) == 1 else None


# --- scoring ------------------------------------------------------------------------------------


def is_correct(answer: str | None, gold: str, options: Sequence[str]) -> bool:
    """Closed-question correctness: the answer names the gold option (``gold`` a letter or option
    text); without options, the same yes/no polarity as a yes/no gold, else the same normalised text."""
    if not answer or not str(answer).strip():
        return False
    if options:
        got = match_option(answer, options)
        return got is not None and got == match_option(gold, options)
    if (want := yes_no_gold(gold)) is not None:
        return yes_no(answer) == want
    got_tokens = tokens(answer)
    return bool(got_tokens) and got_tokens == tokens(gold)


def answer_key(answer: str, options: Sequence[str]) -> str | None:
    """What an answer votes for: the option letter it names, or without options its normalised text."""
    if options:
        return match_option(answer, options)
    return normalize(answer) or None


def exact_match(prediction: str | None, gold: str) -> bool:
    """Open questions: the normalised prediction equals the normalised gold answer."""
    pred = tokens(prediction or "")
    return bool(pred) and pred == tokens(gold)


def _opposite(pred: Sequence[str], ref: Sequence[str]) -> bool:
    """One of the two is negated and the other is not (``no effusion`` against ``effusion``)."""
    return any(t in _NEGATIONS for t in pred) != any(t in _NEGATIONS for t in ref)


def token_f1(prediction: str | None, gold: str) -> float:
    """SQuAD-style token F1 over normalised tokens (CJK: characters); 0 for the opposite polarity."""
    pred, ref = tokens(prediction or ""), tokens(gold)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or not common or _opposite(pred, ref):
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def token_recall(prediction: str | None, gold: str) -> float:
    """The fraction of the gold answer's tokens the prediction contains (LLaVA-Med's open recall);
    0 for the opposite polarity, which containing the gold's words does not make right."""
    pred, ref = tokens(prediction or ""), tokens(gold)
    if not ref or _opposite(pred, ref):
        return 0.0
    have = set(pred)
    return sum(t in have for t in ref) / len(ref)

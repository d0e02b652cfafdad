import random
import unicodedata

import pytest

from chitchat.tokens.normalize import normalize


@pytest.mark.parametrize("raw, expected", [
    # spaces that only segment Chinese text (LCCC) go; full-width punctuation becomes half-width
    ("你 好 ， 世 界", "你好,世界"),
    ("看到 曾经 的 初恋", "看到曾经的初恋"),
    # latin spelled out letter by letter (LCCC) joins up; real words keep one space
    ("S E E D", "SEED"),
    ("我 用 S E E D . 2 4 小 时", "我用SEED.24小时"),
    ("hello world", "hello world"),
    ("hello   world\t again", "hello world again"),
    ("i p h o n e 好 用", "iphone好用"),
    ("我 爱 python 编 程", "我爱python编程"),
    # full-width ASCII -> half-width, ideographic space -> space
    ("ＡＢＣ１２３！？，：；（）", "ABC123!?,:;()"),
    ("Ｈｅｌｌｏ\u3000Ｗｏｒｌｄ", "Hello World"),
    ("你\u3000好", "你好"),
    # CJK punctuation without a half-width twin stays
    ("好的。、「对」", "好的。、「对」"),
    # zero-width and other format characters, C0/C1 controls, BOM are removed
    ("你\u200b好\u200c呀\u200d!\u2060", "你好呀!"),
    ("a\x00b\x07c\x1bd\x7fe\x9f", "abcde"),
    ("\ufeff你好", "你好"),
    ("你\ufeff好", "你好"),
    ("\u00adsoft\u00ad", "soft"),
    # empty and whitespace-only
    ("", ""),
    ("   ", ""),
    ("\t\r\n \u3000\u00a0", ""),
    ("\u200b\ufeff\x00", ""),
    ("  你好  ", "你好"),
])
def test_normalize_examples(raw, expected):
    assert normalize(raw) == expected


def _reference(text: str) -> str:
    """The documented rules, written out plainly (slow, obviously right)."""
    out = []
    for ch in text:
        cp = ord(ch)
        if 0xFF01 <= cp <= 0xFF5E:
            ch = chr(cp - 0xFEE0)
        elif cp == 0x3000:
            ch = " "
        if not ch.isspace() and unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            continue
        out.append(ch)
    tokens = "".join(out).split()
    if not tokens:
        return ""

    def latin(c):
        return c.isascii() and c.isalnum()

    result = tokens[0]
    for prev, tok in zip(tokens, tokens[1:]):
        if latin(prev[-1]) and latin(tok[0]) and not (len(prev) == 1 and len(tok) == 1):
            result += " "
        result += tok
    return result


def test_normalize_matches_the_documented_rules_on_random_text():
    pool = list("aZ09xy 你好世界，。、！？ \t\n\r\u3000\u00a0\u2028\u200b\ufeff\x00\x1f\x85\x9f"
                "\uff21\uff41\uff10\uff0c\uff01\ufe0f\U0001F600\ue000\u00ad.,!")
    rng = random.Random(1234)
    for _ in range(20_000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 16)))
        assert normalize(text) == _reference(text), repr(text)


def test_normalize_is_idempotent():
    rng = random.Random(99)
    pool = list("ab cd 1 2 你好 ，,　\u200b Ｘ")
    for _ in range(5_000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 12)))
        once = normalize(text)
        assert normalize(once) == once, repr(text)


def test_normalized_text_has_no_control_or_runs_of_space():
    text = "ab\u3000\u3000cd  ef\t\tgh\n\nij\u200bkl"
    out = normalize(text)
    assert out == "ab cd ef gh ijkl"
    assert "  " not in out and all(unicodedata.category(c)[0] != "C" for c in out)

"""The worst-case input tokens of a prompt, for the budget guard (`nexus_otel._budget`): the
offline tokenizer's count or a characters bound, whichever is more, plus the format's
per-message overhead; each text's count kept, so a chat's history is counted once."""

from __future__ import annotations

import contextlib
from collections import OrderedDict

from nexus_otel._estimate import estimate_tokens
from nexus_otel._usage import TEXT_KEYS

# Input is at least this many characters per token for English text with every tokenizer we
# know; the tokenizer's own count is used when higher (other scripts).
CHARS_PER_TOKEN_BOUND = 3
# Token counts kept, by text: a chat app sends its whole history again with every call, so only
# its newest messages are new. At most this many texts, the oldest counted forgotten first, of
# at most TOKEN_COUNT_CACHE_TEXT_CHARS each (a longer one is not kept): 4,194,304 characters at
# most, 4 to 16 MB (a character takes 1 to 4 bytes); a chat's messages are far shorter.
TOKEN_COUNT_CACHE_SIZE = 1024
TOKEN_COUNT_CACHE_TEXT_CHARS = 4096
SEPARATOR_TOKENS = 1  # a prompt's texts are joined by a newline: one token
MESSAGE_OVERHEAD_TOKENS = 4  # per message, as providers count the chat format (at most)
REPLY_PRIMING_TOKENS = 3

# By text, oldest first (see TOKEN_COUNT_CACHE_SIZE). Ordered: a dict would have to walk past
# every entry deleted at its front to find the oldest one left.
_TOKEN_COUNTS: OrderedDict[str, int] = OrderedDict()


def worst_case_tokens(prompt: object, messages: int, exact: bool = True) -> tuple[int, bool]:
    """Input tokens at most: the tokenizer's count or the characters bound of the prompt's text,
    whichever is more, plus the format's overhead; and whether that is more than the exact
    count may be. Not `exact`: texts not counted before are taken at their bytes (a token is a
    byte at least), without the tokenizer, and when those bytes decide, the second is True.

    The text is the prompt's texts joined by newlines (as `text_of` joins them). Each text is
    counted on its own (from the cache when an earlier prompt had it) and each newline as a
    token: never less than counting the joined text at once, where a newline can merge with
    its neighbours. A text not counted before is counted only when it can matter: a token is
    at least one byte, so when the counts known plus the other texts' bytes stay within the
    characters bound, that bound is the answer, whatever the tokenizer would say."""
    texts: list[str] = []
    _texts_of(prompt, texts)
    separators = max(0, len(texts) - 1)
    by_chars = -(-(sum(map(len, texts)) + separators) // CHARS_PER_TOKEN_BOUND)
    known = list(map(_TOKEN_COUNTS.get, texts))  # a text has a token at least: None is unknown
    counted = SEPARATOR_TOKENS * separators + sum(filter(None, known))
    bounded = False
    if None in known:
        new = [texts[index] for index, count in enumerate(known) if count is None]
        if exact:
            counted += _count_new(new, by_chars - counted)
        else:
            counted += _bytes(new)
            bounded = counted > by_chars  # else the characters bound decides, as it would
    overhead = MESSAGE_OVERHEAD_TOKENS * messages + REPLY_PRIMING_TOKENS
    return max(counted, by_chars) + overhead, bounded


def _bytes(texts: list[str]) -> int:
    return sum(map(_utf8_size, texts))


def _count_new(texts: list[str], room: int) -> int:
    """The tokens of texts not counted before, or their bytes (an upper bound) once their
    bytes fit in `room`: the tokenizer, on a text it has not seen, costs some 50 µs inside a
    call (its tables are out of the CPU's caches by then) against 10 µs in a loop."""
    bound = _bytes(texts)
    counted = 0
    for text in texts:
        if counted + bound <= room:
            break
        tokens = estimate_tokens(text)
        _remember(text, tokens)
        counted, bound = counted + tokens, bound - _utf8_size(text)
    return counted + bound


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _remember(text: str, tokens: int) -> None:
    """Keeps a text's count, forgetting the oldest beyond TOKEN_COUNT_CACHE_SIZE. No lock: each
    step is one operation of the OrderedDict; threads adding at once may forget one more."""
    if len(text) > TOKEN_COUNT_CACHE_TEXT_CHARS:
        return
    if len(_TOKEN_COUNTS) >= TOKEN_COUNT_CACHE_SIZE:
        with contextlib.suppress(KeyError):  # another thread emptied it meanwhile
            _TOKEN_COUNTS.popitem(False)  # the oldest
    _TOKEN_COUNTS[text] = tokens


def _texts_of(value: object, found: list[str]) -> None:
    """The non-empty texts `text_of` joins, in its order. A list of messages whose text is a
    string, the usual prompt, is read without a call per message."""
    if isinstance(value, str):
        if value:
            found.append(value)
    elif isinstance(value, list):
        for item in value:
            if type(item) is dict:
                for key, part in item.items():
                    if key not in TEXT_KEYS:
                        continue
                    if type(part) is str:
                        if part:
                            found.append(part)
                    else:
                        _texts_of(part, found)
            else:
                _texts_of(item, found)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key in TEXT_KEYS:
                _texts_of(item, found)

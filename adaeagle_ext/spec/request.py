"""Per-request bookkeeping: committed tokens, EOS / stop strings / length limits, streaming."""

from __future__ import annotations

from collections.abc import Callable, Sequence

StreamCallback = Callable[[int, str], None]


class RequestState:
    """Tokens one request has generated and why it finished.

    Args:
        index: the request's position in the batch (passed to ``stream``).
        prompt_ids: the prompt's token ids.
        max_new_tokens: the most tokens to generate (EOS is not counted).
        eos_ids: token ids that end the request (not included in the output).
        stop: strings that end the request; the text is cut before the first one.
        decode: token ids -> text (needed for stop strings and streaming).
        stream: called with (index, new text) as text becomes final.
    """

    def __init__(self, index: int, prompt_ids: Sequence[int], max_new_tokens: int,
                 eos_ids: Sequence[int] = (), stop: Sequence[str] = (),
                 decode: Callable[[list[int]], str] | None = None,
                 stream: StreamCallback | None = None):
        if (stop or stream) and decode is None:
            raise ValueError("stop strings and streaming need a tokenizer (decode)")
        self.index = index
        self.prompt_ids = list(prompt_ids)
        self.max_new_tokens = max_new_tokens
        self.eos_ids = set(eos_ids)
        self.stop = [s for s in stop if s]
        self.decode = decode
        self.stream = stream
        self.out_ids: list[int] = []
        self.finish_reason: str | None = None
        self._text = ""
        self._streamed = 0
        if max_new_tokens <= 0:
            self.finish_reason = "length"

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def history(self) -> list[int]:
        return self.prompt_ids + self.out_ids

    def commit(self, tokens: Sequence[int]) -> None:
        """Append tokens in order until the request finishes; later ones are dropped."""
        for tok in tokens:
            if self.done:
                return
            if tok in self.eos_ids:
                self.finish_reason = "eos"
                return
            self.out_ids.append(int(tok))
            if self.stop and self._hit_stop():
                self.finish_reason = "stop"
                return
            if len(self.out_ids) >= self.max_new_tokens:
                self.finish_reason = "length"

    def _hit_stop(self) -> bool:
        text = self.decode(self.out_ids)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut < 0:
            return False
        self._text = text[:cut]
        return True

    @property
    def text(self) -> str:
        """The generated text (cut before a stop string)."""
        if self.decode is None:
            return ""
        if self.finish_reason == "stop":
            return self._text
        return self.decode(self.out_ids)

    def flush_stream(self) -> None:
        """Send the text that can no longer change to ``stream``."""
        if self.stream is None:
            return
        text = self.text
        end = len(text)
        if not self.done:
            while end > 0 and text[end - 1] == "\ufffd":  # an unfinished UTF-8 sequence
                end -= 1
            for s in self.stop:  # text that may yet become a stop string is held back
                for k in range(min(len(s) - 1, end), 0, -1):
                    if text[:end].endswith(s[:k]):
                        end = min(end, len(text[:end]) - k)
                        break
        if end > self._streamed:
            self.stream(self.index, text[self._streamed:end])
            self._streamed = end

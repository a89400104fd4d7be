"""Stop strings: find them in generated text (also across token boundaries) and hold back
the tail that could still become one, so a streamed delta never shows part of a stop string.
"""

from __future__ import annotations


class StopStringChecker:
    def __init__(self, stop: list[str], include_stop_str_in_output: bool = False) -> None:
        if any(not s for s in stop):
            raise ValueError("stop strings must be non-empty")
        self.stop = list(stop)
        self.include_stop_str_in_output = include_stop_str_in_output
        self.max_stop_len = max((len(s) for s in self.stop), default=0)

    def check(self, text: str, new_char_count: int) -> tuple[str, str] | None:
        """text: the whole output so far, whose last new_char_count characters are new.

        Returns (stop string, text truncated before it, or right after it when included) for
        the earliest occurrence that overlaps the new characters (ties: the shorter string,
        which completed first), or None. Earlier text was checked on earlier calls.
        """
        best: tuple[int, str] | None = None
        old_len = len(text) - new_char_count
        for stop_str in self.stop:
            # Start so that a match must end inside the new characters.
            index = text.find(stop_str, max(0, old_len - len(stop_str) + 1))
            if index < 0:
                continue
            if best is None or (index, len(stop_str)) < (best[0], len(best[1])):
                best = (index, stop_str)
        if best is None:
            return None
        index, stop_str = best
        end = index + len(stop_str) if self.include_stop_str_in_output else index
        return stop_str, text[:end]

    def holdback(self, text: str) -> int:
        """Trailing characters of text not to stream yet: the longest suffix that is a proper
        prefix of a stop string (at most max_stop_len - 1). 0 when stop strings are included in
        the output, since then the text before a stop string is final either way."""
        if self.include_stop_str_in_output:
            return 0
        longest = 0
        for stop_str in self.stop:
            for size in range(min(len(stop_str) - 1, len(text)), longest, -1):
                if text.endswith(stop_str[:size]):
                    longest = size
                    break
        return longest

"""Text that people typed (run names, participants' names), drawn as text and never as Markdown or HTML."""

from __future__ import annotations

import re

# Every ASCII punctuation mark CommonMark lets a backslash escape, plus the ones Streamlit's Markdown adds
# (`:material/...:` icons and `:color[...]` directives start with a colon, math with a dollar sign).
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~$:&\"'=^%@/])")


def plain(text: str | None) -> str:
    """`text` escaped so that `st.markdown`, `st.title` or `st.caption` show exactly these characters:
    `**x**` stays two stars, `![](http://…)` loads nothing, `<b>` is not a tag. Newlines become spaces."""
    if not text:
        return ""
    return _MARKDOWN.sub(r"\\\1", " ".join(str(text).split()))

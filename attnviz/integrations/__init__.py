"""Running attnviz on other engines (Ray Data); each needs its own optional extra.

The engine's package is imported only by its own module here, so ``import attnviz`` and
``attnviz --help`` never pay for (or need) an engine that is not installed.
"""

from __future__ import annotations

from attnviz.errors import AttnvizError


class MissingExtraError(AttnvizError, ImportError):
    """An integration's engine is not installed.

    Both an ImportError (what optional-dependency code usually catches) and the project's
    own error (what the CLI shows as one line).
    """

    def __init__(self, engine: str, extra: str) -> None:
        super().__init__(f"{engine} is not installed; pip install 'attnviz[{extra}]'")
        self.engine, self.extra = engine, extra


__all__ = ["MissingExtraError"]

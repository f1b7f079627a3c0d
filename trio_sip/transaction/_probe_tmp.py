from ..runtime import core  # noqa

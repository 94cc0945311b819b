"""Exceptions that carry a config path, so users see *where* in their YAML something is wrong."""


class ConfigError(ValueError):
    """A configuration is malformed: the message names the config path and what was expected."""


class RegistryError(KeyError):
    """A block name is unknown, taken twice, or a plugin failed: the message says which and why."""

    def __str__(self) -> str:  # KeyError would repr() the message; show it as written
        return str(self.args[0]) if self.args else ""


class CheckpointError(ConfigError):
    """A weight file cannot be used: truncated or corrupted, refused as unsafe, or not the kind expected. Names the file."""


class MissingExtraError(ImportError):
    """A feature needs an optional dependency that is not installed; the message names the extra to install."""


class FetchError(OSError):
    """A small remote file (a shard manifest, a stats file) could not be fetched for a reason other than its absence
    (an unreachable server); the message names the URL."""


# What a command reports as one line (the message names the file, key or config path) instead of a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, RegistryError, FileNotFoundError, MissingExtraError, FetchError)

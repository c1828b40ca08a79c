"""The errors a user can act on, in one module every layer may import: each message is one line naming what was
wrong, the value seen and what to do."""


class ConfigError(ValueError):
    """A config that cannot run; the message says what to change."""


class DistributedConfigError(ValueError):
    """The environment describes a multi-process job incompletely."""


class TooManySkipsError(RuntimeError):
    """A source skipped more records than `data.max_skip_fraction` allows."""


def check_choice(value, choices, key: str) -> None:
    """Raises ConfigError unless `value` (the config key `key`) is one of `choices`."""
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {list(choices)}")

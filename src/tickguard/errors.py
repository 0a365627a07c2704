"""Error types shared across tickguard's modules."""


class TickguardError(Exception):
    """An error a command reports to the user as one clear line (no traceback)."""


class ModelIntegrityError(TickguardError):
    """A model file does not match the sha256 recorded in its model card, or the card is unusable."""

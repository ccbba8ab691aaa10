"""Pure dashboard state: numpy and dataclasses only, no Qt, so it is unit-tested directly."""

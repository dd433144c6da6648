"""The stemlink wire format v1, sans-IO: encode/decode/validate, constants, sequence
arithmetic, packet tags. Imports only the standard library and numpy."""

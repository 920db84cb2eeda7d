"""The model and what runs on it: load (FILE* included) and generation, speculative decoding
(n-gram and draft-model drafters, paced by measured costs), grammars, log-probabilities, a loaded
model's facts. Imports engine's top (`backend`, `settings`), `runtime.sources` and
`runtime.file`; never `devices` or `media`."""

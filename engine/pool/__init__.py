"""The Redis pool (`[queue] backend = "redis"`): the bot's engine hands batches to `aidraw worker`
processes (one per GPU, on any machine) through Redis Streams and reads their results back.

`wire` is what travels (JSON only, checked on arrival), `dispatcher` the bot's side (an
`Engine` whose loop sends batches instead of drawing them), `worker` the drawing side (a local
`Engine` fed from the worker's stream), `roster` the workers' heartbeats.
"""

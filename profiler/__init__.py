"""The profiler (docs/design.md §2, §6): measures a pipeline with the executor's hooks (``measure``) and
calibrates a profile's quality model by calling the planner (``calibrate``); ``command`` is
``parastep profile``. Imports torch; loaded only by the commands that measure."""

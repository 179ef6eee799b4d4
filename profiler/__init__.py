"""The profiler (docs/design.md §2, §6): measures a pipeline with the executor's hooks and calibrates
a profile's quality model by calling the planner. Imports torch; loaded only by the commands that
measure.

- ``measure``: the steps of one profile, in order (``measure_profile``, ``retime``, ``add_split_costs``, ``add_batch_costs``)
- ``trajectory``: the reference run; ``deviation``: reuse-then-predict and reuse deviation tables;
  ``propagation``: how a window's deviation reaches the output, per calibration image
- ``compute``: forward, step and CFG half-forward times; ``comm``: exchange and pair-swap fits
- ``instrument``, ``call``, ``machine``, ``settings``: calling the pipeline, its defaults, the device
  description, the profiler's settings
- ``calibrate``: PSNR calibration on the plans the optimizer picks; ``correct``: plan-level
  corrections; ``audit``: windows run alone; ``verify``: ``plan --verify``
- ``command``: ``parastep profile``; ``plan_command``: ``parastep plan`` (with ``--verify``)
"""

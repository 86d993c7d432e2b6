"""The application on top of the jaxcurv library: the ``jaxcurv`` command and what it runs.

The library (:mod:`jaxcurv`) computes; this package turns it into runs on disk:

- :mod:`~jaxcurv.app.cli`: the command line, which only parses and calls the rest;
- :mod:`~jaxcurv.app.config` (one value at a time: :mod:`~jaxcurv.app.config_values`):
  typed TOML configs;
- :mod:`~jaxcurv.app.data`, :mod:`~jaxcurv.app.models`: the embedded data and the
  reference models;
- :mod:`~jaxcurv.app.loop`: the training loop, built from
  :mod:`~jaxcurv.app.training_step`, :mod:`~jaxcurv.app.resume` and
  :mod:`~jaxcurv.app.interrupt`;
- :mod:`~jaxcurv.app.run_folder`, :mod:`~jaxcurv.app.checkpoints`,
  :mod:`~jaxcurv.app.metrics`: what a run writes;
- :mod:`~jaxcurv.app.plots` and :mod:`~jaxcurv.app.extras`: plots, and the optional
  dependencies they need (the ``cli`` extra);
- :mod:`~jaxcurv.app.landscape_report`: the ``jaxcurv landscape`` command;
- :mod:`~jaxcurv.app.demo` and :mod:`~jaxcurv.app.seed_sections`: ``jaxcurv demo``.

The arrow runs one way: the app imports the library, never the reverse, and
``import jaxcurv`` loads none of this (``tests/test_layout.py`` checks both). Nothing is
imported here: each module loads only what it uses (``import jaxcurv.app.config`` loads
no model, data, training loop or matplotlib).
"""

"""What a run is and how it lives: the command line composed (`composing`) and expanded into runs (`sweep`), each
checked once into a typed spec (`spec`, `validation`, and `machine` and `cpu` for what depends on the machine) and
named (`naming`); the model and budget the spec describes (`build`); the run's record, written however the run
ends (`record`, `environment`, `console`), and its resumption (`resume`). What each task does is `sharebench.train`;
Hydra's entry is `sharebench.main`."""

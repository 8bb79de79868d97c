"""How a run's work is planned (:mod:`.plan`), what each unit does (:mod:`.work`), and who runs it (:mod:`.local`,
:mod:`.ray_executor`, chosen by :func:`.executor.make_executor`)."""

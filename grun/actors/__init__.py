"""The Pyro5 actors: master (queue), node (exec host) and job supervisor."""

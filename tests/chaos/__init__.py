"""The chaos run (``make chaos``; its short profile is ``tests/test_chaos.py``).

``handlers`` are what the workers host; ``topology`` starts and hits the processes;
``monkey`` plans the chaos from the seed; ``load`` is the clients; ``evidence`` reads what
happened; ``verify`` checks it; ``diagnose`` details stuck invocations; ``report`` writes
the JSON and the summary; ``run`` ties a phase together; ``__main__`` is the command.
"""

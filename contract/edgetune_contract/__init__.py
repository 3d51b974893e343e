"""The contract between the edgetune operator and its job steps — standard library only, so
the operator image ships it without the ML stack, and Python 3.8-compatible, so the Jetson
image (JetPack 5's Python) runs it too.

- names:    API group, kinds, steps, labels, the Pod's environment, Job names, artifact paths
- cliargs:  typed command lines (a dataclass -> argparse parser, to_argv, from_argv)
- args:     each step's arguments class
- results:  the result document and each step's typed result; the accuracy gate
- progress: progress lines and the whole job's percentage
- meta:     the export's pipeline meta (pipeline.json)
"""

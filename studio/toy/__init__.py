"""The toy world: a tiny SD-format teacher trained offline on procedural shapes.

A client of the library, not part of it: importing it registers the toy data
source ("--data toy") and the toy judge (the "toy" family's judge). The command
line and the app import it; nothing else in `studio/` does.
"""

from studio.kinds.data import register_data_source
from studio.kinds.evaluation.judges import register_judge
from studio.toy.data import ToyData
from studio.toy.judge import caption_accuracy

register_data_source("toy", ToyData)
register_judge("toy", caption_accuracy)

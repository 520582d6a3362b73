"""``python -m medstudy.report``: build the paper (see :func:`medstudy.report.main`)."""

from medstudy.report import main

raise SystemExit(main())

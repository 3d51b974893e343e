# The operator's stand-in step (tests/cluster/standin_step.py) in an image the local cluster's
# nodes run: the operator image (Python, edgetune_jobs.contract) plus the script. Built by
# tests/cluster/operator_fixtures.py (standin_image) with buildah; a test image, not shipped.
ARG OPERATOR_IMAGE=localhost/edgetune/operator:dev
FROM ${OPERATOR_IMAGE}
COPY tests/cluster/standin_step.py /opt/edgetune/standin_step.py

# pipelines/docstring.mk — circuit discovery on the docstring task.
#   make -f pipelines/docstring.mk MODEL=dir METHOD=eap-ig N=100 SEED=0
# See pipelines/common.mk for every setting and the run directory layout.
TASK := docstring
include $(dir $(lastword $(MAKEFILE_LIST)))common.mk

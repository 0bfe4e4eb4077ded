# pipelines/ioi.mk — circuit discovery on the ioi task.
#   make -f pipelines/ioi.mk MODEL=dir METHOD=eap-ig N=100 SEED=0
# See pipelines/common.mk for every setting and the run directory layout.
TASK := ioi
include $(dir $(lastword $(MAKEFILE_LIST)))common.mk

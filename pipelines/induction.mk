# pipelines/induction.mk — circuit discovery on the induction task.
#   make -f pipelines/induction.mk MODEL=dir METHOD=eap-ig N=100 SEED=0
# See pipelines/common.mk for every setting and the run directory layout.
TASK := induction
include $(dir $(lastword $(MAKEFILE_LIST)))common.mk

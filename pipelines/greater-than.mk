# pipelines/greater-than.mk — circuit discovery on the greater-than task.
#   make -f pipelines/greater-than.mk MODEL=dir METHOD=eap-ig N=100 SEED=0
# See pipelines/common.mk for every setting and the run directory layout.
TASK := greater-than
include $(dir $(lastword $(MAKEFILE_LIST)))common.mk

# Our packages: only quince itself; everything else comes from Buildroot.
include $(sort $(wildcard $(BR2_EXTERNAL_QUINCE_PATH)/package/*/*.mk))

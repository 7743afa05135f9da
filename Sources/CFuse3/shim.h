// Why a shim: FUSE_USE_VERSION must be set before the header.
#define FUSE_USE_VERSION 314
#include <stddef.h>
#include <sys/stat.h>
#include <fuse_lowlevel.h>
#include <fuse_opt.h>

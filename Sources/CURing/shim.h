// Why a shim: <sys/select.h> must precede <liburing.h> on this libc, and fallocate's mode bits live in <linux/falloc.h>.
#include <sys/select.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <liburing.h>

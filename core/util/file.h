/* Whole-file reads and crash-safe writes. */
#ifndef SG_UTIL_FILE_H
#define SG_UTIL_FILE_H

#include <stddef.h>

/* Reads a whole file into a NUL-terminated malloc'd buffer. Returns 0, or a
 * negative errno with a message naming the path in err. */
int sg_file_read(const char *path, char **out, size_t *len, char *err,
                 size_t errlen);

/* Replaces `path` with `data` so that a reader (or a restart after kill -9
 * or a power cut) sees either the old file or the new one, never a mix:
 * write a temporary file in the same directory, fsync it, rename it over
 * the path, fsync the directory. Returns 0 or a negative errno (with err). */
int sg_file_write_atomic(const char *path, const char *data, size_t len,
                         char *err, size_t errlen);

/* Removes the temporary files sg_file_write_atomic leaves behind when the
 * process is killed mid-write (`<path>.tmp.XXXXXX`). Returns how many. */
int sg_file_remove_stale_temps(const char *path);

#endif

#include "util/file.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int sg_file_read(const char *path, char **out, size_t *len, char *err,
                 size_t errlen) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    int e = errno;
    if (fd >= 0)
      close(fd);
    snprintf(err, errlen, "cannot read %s: %s", path, strerror(e));
    return -e;
  }
  size_t cap = (size_t)st.st_size + 1, n = 0;
  char *buf = malloc(cap);
  while (buf) {
    if (n + 1 >= cap) {
      char *nb = realloc(buf, cap * 2);
      if (!nb) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = nb;
      cap *= 2;
    }
    ssize_t r = read(fd, buf + n, cap - n - 1);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      int e = errno;
      free(buf);
      close(fd);
      snprintf(err, errlen, "cannot read %s: %s", path, strerror(e));
      return -e;
    }
    if (r == 0)
      break;
    n += (size_t)r;
  }
  close(fd);
  if (!buf) {
    snprintf(err, errlen, "cannot read %s: out of memory", path);
    return -ENOMEM;
  }
  buf[n] = 0;
  *out = buf;
  if (len)
    *len = n;
  return 0;
}

static int write_all(int fd, const char *data, size_t len) {
  while (len) {
    ssize_t w = write(fd, data, len);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0)
      return -errno;
    data += w;
    len -= (size_t)w;
  }
  return 0;
}

int sg_file_write_atomic(const char *path, const char *data, size_t len,
                         char *err, size_t errlen) {
  char tmp[4096], dir[4096];
  if (snprintf(tmp, sizeof(tmp), "%s.tmp.XXXXXX", path) >= (int)sizeof(tmp)) {
    snprintf(err, errlen, "path too long: %s", path);
    return -ENAMETOOLONG;
  }
  int fd = mkstemp(tmp);
  if (fd < 0) {
    int e = errno;
    snprintf(err, errlen, "cannot create a file next to %s: %s", path,
             strerror(e));
    return -e;
  }
  int rc = write_all(fd, data, len);
  if (!rc && fsync(fd) != 0)
    rc = -errno;
  if (close(fd) != 0 && !rc)
    rc = -errno;
  if (!rc && rename(tmp, path) != 0)
    rc = -errno;
  if (rc) {
    unlink(tmp);
    snprintf(err, errlen, "cannot write %s: %s", path, strerror(-rc));
    return rc;
  }
  /* The rename itself must reach the disk too. */
  snprintf(dir, sizeof(dir), "%s", path);
  int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return 0;
}

int sg_file_remove_stale_temps(const char *path) {
  char dir[4096], base[4096], prefix[4200];
  snprintf(dir, sizeof(dir), "%s", path);
  snprintf(base, sizeof(base), "%s", path);
  snprintf(prefix, sizeof(prefix), "%s.tmp.", basename(base));
  const char *d = dirname(dir);
  DIR *dh = opendir(d);
  if (!dh)
    return 0;
  int n = 0;
  size_t plen = strlen(prefix);
  struct dirent *de;
  while ((de = readdir(dh))) {
    /* Exactly what mkstemp made: the prefix and six more characters. */
    if (strncmp(de->d_name, prefix, plen) != 0 ||
        strlen(de->d_name) != plen + 6)
      continue;
    char full[8400];
    snprintf(full, sizeof(full), "%s/%s", d, de->d_name);
    if (unlink(full) == 0)
      n++;
  }
  closedir(dh);
  return n;
}

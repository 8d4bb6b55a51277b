#include "mpi.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

typedef void* handle;

// The entry points and handles are process-wide because libmpi is; sd_load
// fills them once (the Go side guards it with sync.Once).
static struct {
  int (*MPI_Init_thread)(int*, char***, int, int*);
  int (*MPI_Comm_rank)(handle, int*);
  int (*MPI_Comm_size)(handle, int*);
  int (*MPI_Comm_set_errhandler)(handle, handle);
  int (*MPI_Iallreduce)(const void*, void*, int, handle, handle, handle, void**);
  int (*MPI_Ibcast)(void*, int, handle, int, handle, void**);
  int (*MPI_Ibarrier)(handle, void**);
  int (*MPI_Test)(void**, int*, void*);
  int (*MPI_Abort)(handle, int);
  int (*MPI_Finalize)(void);
  int (*MPI_Error_string)(int, char*, int*);
  handle world, errors_return;
  handle types[sd_ntypes];
  handle ops[sd_nops];
} mpi;

// Open MPI's MPI_IN_PLACE.
#define SD_IN_PLACE ((void*)1)

int sd_load(const char* path, char* err, size_t errlen) {
  // RTLD_GLOBAL: Open MPI's plugins, which it dlopens itself, resolve
  // symbols of libmpi and libopen-pal through the global namespace.
  void* h = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
  if (!h) {
    snprintf(err, errlen, "%s", dlerror());
    return 1;
  }
#define SD_SYM(dst, name)                                                                     \
  *(void**)(&(dst)) = dlsym(h, name);                                                          \
  if (!(dst)) {                                                                               \
    snprintf(err, errlen, "%s does not export %s (sparselora needs Open MPI's libmpi)", path, name); \
    return 2;                                                                                 \
  }
  SD_SYM(mpi.MPI_Init_thread, "MPI_Init_thread")
  SD_SYM(mpi.MPI_Comm_rank, "MPI_Comm_rank")
  SD_SYM(mpi.MPI_Comm_size, "MPI_Comm_size")
  SD_SYM(mpi.MPI_Comm_set_errhandler, "MPI_Comm_set_errhandler")
  SD_SYM(mpi.MPI_Iallreduce, "MPI_Iallreduce")
  SD_SYM(mpi.MPI_Ibcast, "MPI_Ibcast")
  SD_SYM(mpi.MPI_Ibarrier, "MPI_Ibarrier")
  SD_SYM(mpi.MPI_Test, "MPI_Test")
  SD_SYM(mpi.MPI_Abort, "MPI_Abort")
  SD_SYM(mpi.MPI_Finalize, "MPI_Finalize")
  SD_SYM(mpi.MPI_Error_string, "MPI_Error_string")
  SD_SYM(mpi.world, "ompi_mpi_comm_world")
  SD_SYM(mpi.errors_return, "ompi_mpi_errors_return")
  SD_SYM(mpi.types[sd_float], "ompi_mpi_float")
  SD_SYM(mpi.types[sd_double], "ompi_mpi_double")
  SD_SYM(mpi.types[sd_int64], "ompi_mpi_int64_t")
  SD_SYM(mpi.types[sd_byte], "ompi_mpi_byte")
  SD_SYM(mpi.ops[sd_sum], "ompi_mpi_op_sum")
  SD_SYM(mpi.ops[sd_max], "ompi_mpi_op_max")
  SD_SYM(mpi.ops[sd_min], "ompi_mpi_op_min")
  return 0;
}

int sd_init(int required, int* provided) { return mpi.MPI_Init_thread(NULL, NULL, required, provided); }
int sd_world_errors_return(void) { return mpi.MPI_Comm_set_errhandler(mpi.world, mpi.errors_return); }
int sd_rank(int* rank) { return mpi.MPI_Comm_rank(mpi.world, rank); }
int sd_size(int* size) { return mpi.MPI_Comm_size(mpi.world, size); }
int sd_iallreduce(void* buf, int count, int type, int op, void** request) {
  return mpi.MPI_Iallreduce(SD_IN_PLACE, buf, count, mpi.types[type], mpi.ops[op], mpi.world, request);
}
int sd_ibcast(void* buf, int count, int type, int root, void** request) {
  return mpi.MPI_Ibcast(buf, count, mpi.types[type], root, mpi.world, request);
}
int sd_ibarrier(void** request) { return mpi.MPI_Ibarrier(mpi.world, request); }
// MPI_STATUS_IGNORE is a null pointer in Open MPI.
int sd_test(void** request, int* done) { return mpi.MPI_Test(request, done, NULL); }
int sd_abort(int code) { return mpi.MPI_Abort(mpi.world, code); }
int sd_finalize(void) { return mpi.MPI_Finalize(); }
void sd_error_string(int code, char* out, size_t outlen) {
  char buf[512];
  int n = 0;
  if (mpi.MPI_Error_string(code, buf, &n) != 0 || n <= 0 || n >= (int)sizeof buf) {
    snprintf(out, outlen, "MPI error %d", code);
    return;
  }
  buf[n] = 0;
  snprintf(out, outlen, "%s (MPI error %d)", buf, code);
}

// The few MPI calls sparselora needs, bound at run time from Open MPI's libmpi
// (dlopen), so a binary runs without MPI installed. Open MPI's handles
// (MPI_Comm, MPI_Datatype, MPI_Op, MPI_Errhandler) are pointers to global
// objects that libmpi exports (ompi_mpi_comm_world, ompi_mpi_float, ...):
// they are resolved with dlsym like the functions.
#ifndef SPARSELORA_DIST_MPI_H
#define SPARSELORA_DIST_MPI_H

#include <stddef.h>
#include <stdint.h>

// Datatypes and reductions, as indices into the resolved handle tables.
enum { sd_float, sd_double, sd_int64, sd_byte, sd_ntypes };
enum { sd_sum, sd_max, sd_min, sd_nops };

// sd_load opens the library at path and resolves every function and handle;
// it returns 0, or non-zero with a message in err.
int sd_load(const char* path, char* err, size_t errlen);

// Each returns MPI's error code (0: MPI_SUCCESS).
int sd_init(int required, int* provided);
int sd_world_errors_return(void);
int sd_rank(int* rank);
int sd_size(int* size);
// The collectives are started non-blocking and polled with sd_test, so a
// process waiting for a slower one sleeps instead of spinning on a core
// (which, on a machine whose processes share cores, slows the others).
int sd_iallreduce(void* buf, int count, int type, int op, void** request);
int sd_ibcast(void* buf, int count, int type, int root, void** request);
int sd_ibarrier(void** request);
// sd_test sets *done when the request completed (and frees it).
int sd_test(void** request, int* done);
int sd_abort(int code);
int sd_finalize(void);
void sd_error_string(int code, char* out, size_t outlen);

#endif

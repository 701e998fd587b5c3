/* recvmmsg/sendmmsg for the DNS service's listening UDP socket, and the calls of an upstream
 * query's socket (dns_svc/mmsg.py loads it).
 *
 * Python's socket module has one system call per datagram (recvfrom, sendto). Under load the
 * kernel's entry, exit and wake-up costs of those calls are most of what a cache hit costs, so
 * the listener receives up to a batch of datagrams in one recvmmsg and sends the replies of that
 * batch in one sendmmsg. Built by scripts/compile.py; without it the listener uses recvfrom and
 * sendto.
 *
 * Every call is made on a non-blocking socket with the GIL held: none waits, so the static
 * buffers below are used by one call at a time. Errors are returned as negative errno values, not
 * raised: the listener decides per message what an error means (wait for room, skip one), and an
 * exception per EAGAIN would cost more than the call.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_BATCH 64

static struct mmsghdr recv_msgs[MAX_BATCH];
static struct iovec recv_iov[MAX_BATCH];
static struct sockaddr_storage recv_addrs[MAX_BATCH];
static char *recv_buf = NULL; /* MAX_BATCH * recv_size bytes */
static Py_ssize_t recv_size = 0;

static struct mmsghdr send_msgs[MAX_BATCH];
static struct iovec send_iov[MAX_BATCH];
static struct sockaddr_storage send_addrs[MAX_BATCH];

/* The last address seen, as Python's socket module would give it and as a sockaddr: a client
 * sending many queries gets one tuple for all of them, and its replies need no parsing back. */
static PyObject *last_tuple = NULL;
static struct sockaddr_storage last_sa;
static socklen_t last_len = 0;

static void remember(PyObject *tuple, const struct sockaddr_storage *sa, socklen_t len) {
    Py_INCREF(tuple);
    Py_XSETREF(last_tuple, tuple);
    memcpy(&last_sa, sa, len);
    last_len = len;
}

/* The address tuple recvfrom would return: (host, port) or (host, port, flowinfo, scope_id). */
static PyObject *address_of(const struct sockaddr_storage *sa, socklen_t len) {
    char host[INET6_ADDRSTRLEN + IF_NAMESIZE + 2];
    if (sa->ss_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)sa;
        if (inet_ntop(AF_INET, &v4->sin_addr, host, sizeof(host)) == NULL) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        return Py_BuildValue("(si)", host, (int)ntohs(v4->sin_port));
    }
    if (sa->ss_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)sa;
        /* getnameinfo, as the socket module does: a scoped address keeps its "%zone" */
        if (getnameinfo((const struct sockaddr *)sa, len, host, sizeof(host), NULL, 0, NI_NUMERICHOST) != 0) {
            PyErr_SetString(PyExc_OSError, "getnameinfo failed on a received address");
            return NULL;
        }
        return Py_BuildValue("(siII)", host, (int)ntohs(v6->sin6_port), (unsigned int)ntohl(v6->sin6_flowinfo),
                             (unsigned int)v6->sin6_scope_id);
    }
    PyErr_SetString(PyExc_OSError, "a datagram from an address of another family");
    return NULL;
}

/* The sockaddr for an address tuple as recvfrom returns it (numeric hosts only: replies go to
 * addresses queries came from). 0 on success, -1 when the tuple is not such an address. */
static int sockaddr_of(PyObject *addr, struct sockaddr_storage *sa, socklen_t *len) {
    if (addr == last_tuple && last_tuple != NULL) {
        memcpy(sa, &last_sa, last_len);
        *len = last_len;
        return 0;
    }
    if (!PyTuple_Check(addr) || (PyTuple_GET_SIZE(addr) != 2 && PyTuple_GET_SIZE(addr) != 4)) {
        return -1;
    }
    PyObject *host_obj = PyTuple_GET_ITEM(addr, 0);
    PyObject *port_obj = PyTuple_GET_ITEM(addr, 1);
    if (!PyUnicode_Check(host_obj) || !PyLong_Check(port_obj)) {
        return -1;
    }
    const char *host = PyUnicode_AsUTF8(host_obj);
    long port = PyLong_AsLong(port_obj);
    if (host == NULL || port < 0 || port > 65535) {
        PyErr_Clear();
        return -1;
    }
    memset(sa, 0, sizeof(*sa));
    if (PyTuple_GET_SIZE(addr) == 2) {
        struct sockaddr_in *v4 = (struct sockaddr_in *)sa;
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &v4->sin_addr) != 1) {
            return -1;
        }
        *len = sizeof(*v4);
        return 0;
    }
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)sa;
    PyObject *flow_obj = PyTuple_GET_ITEM(addr, 2);
    PyObject *scope_obj = PyTuple_GET_ITEM(addr, 3);
    if (!PyLong_Check(flow_obj) || !PyLong_Check(scope_obj)) {
        return -1;
    }
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((uint16_t)port);
    v6->sin6_flowinfo = htonl((uint32_t)PyLong_AsUnsignedLong(flow_obj));
    v6->sin6_scope_id = (uint32_t)PyLong_AsUnsignedLong(scope_obj);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    char bare[INET6_ADDRSTRLEN];
    const char *zone = strchr(host, '%');
    if (zone != NULL) { /* "fe80::1%eth0": the zone is in scope_id already */
        size_t n = (size_t)(zone - host);
        if (n >= sizeof(bare)) {
            return -1;
        }
        memcpy(bare, host, n);
        bare[n] = '\0';
        host = bare;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) != 1) {
        return -1;
    }
    *len = sizeof(*v6);
    return 0;
}

PyDoc_STRVAR(recv_into_doc,
             "recv_into(fd, datas, addrs, count, size) -> int\n\n"
             "Receive up to count datagrams of at most size bytes each in one recvmmsg on the\n"
             "non-blocking socket fd; append each datagram to datas and its sender (the tuple\n"
             "recvfrom would give) to addrs. Returns how many were appended, 0 when none was\n"
             "queued, or -errno on an error before the first one (an ICMP error queued for an\n"
             "earlier reply, for example).");

static PyObject *recv_into(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyList_Check(args[1]) || !PyList_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "recv_into(fd: int, datas: list, addrs: list, count: int, size: int)");
        return NULL;
    }
    int fd = (int)PyLong_AsLong(args[0]);
    Py_ssize_t count = PyLong_AsSsize_t(args[3]);
    Py_ssize_t size = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (count < 1 || count > MAX_BATCH || size < 1 || size > 65536) {
        PyErr_SetString(PyExc_ValueError, "count must be 1-64 and size 1-65536");
        return NULL;
    }
    if (size > recv_size) {
        char *grown = PyMem_RawRealloc(recv_buf, (size_t)(MAX_BATCH * size));
        if (grown == NULL) {
            return PyErr_NoMemory();
        }
        recv_buf = grown;
        recv_size = size;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        recv_iov[i].iov_base = recv_buf + i * recv_size;
        recv_iov[i].iov_len = (size_t)size;
        struct msghdr *h = &recv_msgs[i].msg_hdr;
        h->msg_name = &recv_addrs[i];
        h->msg_namelen = sizeof(recv_addrs[i]);
        h->msg_iov = &recv_iov[i];
        h->msg_iovlen = 1;
        h->msg_control = NULL;
        h->msg_controllen = 0;
        h->msg_flags = 0;
    }
    int got;
    do {
        got = recvmmsg(fd, recv_msgs, (unsigned int)count, MSG_DONTWAIT, NULL);
    } while (got < 0 && errno == EINTR);
    if (got < 0) {
        return PyLong_FromLong(errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno);
    }
    PyObject *datas = args[1], *addrs = args[2];
    long appended = 0;
    for (int i = 0; i < got; i++) {
        struct msghdr *h = &recv_msgs[i].msg_hdr;
        PyObject *addr;
        if (last_tuple != NULL && h->msg_namelen == last_len && memcmp(&recv_addrs[i], &last_sa, last_len) == 0) {
            addr = Py_NewRef(last_tuple);
        } else {
            addr = address_of(&recv_addrs[i], h->msg_namelen);
            if (addr == NULL) { /* no address to answer: this one only is dropped */
                PyErr_Clear();
                continue;
            }
            remember(addr, &recv_addrs[i], h->msg_namelen);
        }
        PyObject *data = PyBytes_FromStringAndSize(recv_iov[i].iov_base, (Py_ssize_t)recv_msgs[i].msg_len);
        int failed = data == NULL || PyList_Append(datas, data) < 0 || PyList_Append(addrs, addr) < 0;
        Py_XDECREF(data);
        Py_DECREF(addr);
        if (failed) {
            return NULL;
        }
        appended++;
    }
    return PyLong_FromLong(appended);
}

PyDoc_STRVAR(send_from_doc,
             "send_from(fd, replies, addrs, start) -> int\n\n"
             "Send replies[start:] to addrs[start:] (bytes, and address tuples as recvfrom gives\n"
             "them; at most 64 of them) in one sendmmsg on the non-blocking socket fd, in order.\n"
             "Returns how many were sent from start on (fewer than asked when the kernel stopped\n"
             "early: call again for the rest), or -errno when the first of them could not be sent\n"
             "(-EINVAL as well when its address or reply is not one this call can send).");

static PyObject *send_from(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyList_Check(args[1]) || !PyList_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "send_from(fd: int, replies: list, addrs: list, start: int)");
        return NULL;
    }
    int fd = (int)PyLong_AsLong(args[0]);
    Py_ssize_t start = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    PyObject *replies = args[1], *addrs = args[2];
    Py_ssize_t end = PyList_GET_SIZE(replies);
    if (PyList_GET_SIZE(addrs) < end) {
        end = PyList_GET_SIZE(addrs);
    }
    if (start < 0 || start >= end) {
        return PyLong_FromLong(0);
    }
    if (end - start > MAX_BATCH) {
        end = start + MAX_BATCH;
    }
    unsigned int n = 0;
    PyObject *previous = NULL;
    for (Py_ssize_t i = start; i < end; i++, n++) {
        PyObject *reply = PyList_GET_ITEM(replies, i);
        PyObject *addr = PyList_GET_ITEM(addrs, i);
        socklen_t len;
        if (!PyBytes_Check(reply)) {
            break;
        }
        if (addr == previous) { /* one client's replies in a row: its address once */
            memcpy(&send_addrs[n], &send_addrs[n - 1], sizeof(send_addrs[n]));
            len = send_msgs[n - 1].msg_hdr.msg_namelen;
        } else if (sockaddr_of(addr, &send_addrs[n], &len) != 0) {
            break;
        }
        previous = addr;
        send_iov[n].iov_base = PyBytes_AS_STRING(reply);
        send_iov[n].iov_len = (size_t)PyBytes_GET_SIZE(reply);
        struct msghdr *h = &send_msgs[n].msg_hdr;
        h->msg_name = &send_addrs[n];
        h->msg_namelen = len;
        h->msg_iov = &send_iov[n];
        h->msg_iovlen = 1;
        h->msg_control = NULL;
        h->msg_controllen = 0;
        h->msg_flags = 0;
    }
    if (n == 0) {
        return PyLong_FromLong(-EINVAL); /* the first one cannot be sent: the caller skips it */
    }
    int sent;
    do {
        sent = sendmmsg(fd, send_msgs, n, MSG_DONTWAIT);
    } while (sent < 0 && errno == EINTR);
    return PyLong_FromLong(sent < 0 ? -errno : sent);
}

/* The upstream side of a cache miss: one socket per query, each from a fresh port (connect
 * draws it, a disconnect gives it back). The socket module's calls cost more Python work than
 * the system calls themselves there: the address tuple parsed on every connect, the GIL let go
 * and taken back around each call, a 64 KB buffer allocated and shrunk for every reply, an
 * exception for every EAGAIN, and the disconnect (which Python cannot express) through ctypes
 * with a select.poll object to see whether anything was queued. */

static char reply_buf[65536];

PyDoc_STRVAR(address_doc,
             "address(addr) -> bytes\n\n"
             "The struct sockaddr for a numeric address tuple ((host, port) or (host, port,\n"
             "flowinfo, scope_id)), to hand to connect_send. ValueError when it is not one.");

static PyObject *address(PyObject *module, PyObject *addr) {
    struct sockaddr_storage sa;
    socklen_t len;
    if (sockaddr_of(addr, &sa, &len) != 0) {
        PyErr_SetString(PyExc_ValueError, "not a numeric IPv4 or IPv6 address tuple");
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)&sa, (Py_ssize_t)len);
}

PyDoc_STRVAR(connect_send_doc,
             "connect_send(fd, sockaddr, packet) -> int\n\n"
             "connect() the UDP socket fd to sockaddr (bytes from address(); the kernel binds an\n"
             "unbound socket to a random port of the ephemeral range) and send packet on it.\n"
             "Returns 0, or -errno of the call that failed.");

static PyObject *connect_send(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyBytes_Check(args[1]) || !PyBytes_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "connect_send(fd: int, sockaddr: bytes, packet: bytes)");
        return NULL;
    }
    int fd = (int)PyLong_AsLong(args[0]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t salen = PyBytes_GET_SIZE(args[1]);
    if (salen < (Py_ssize_t)sizeof(sa_family_t) || salen > (Py_ssize_t)sizeof(struct sockaddr_storage)) {
        PyErr_SetString(PyExc_ValueError, "not a sockaddr");
        return NULL;
    }
    int rc;
    do {
        rc = connect(fd, (const struct sockaddr *)PyBytes_AS_STRING(args[1]), (socklen_t)salen);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0) {
        return PyLong_FromLong(-errno);
    }
    ssize_t sent;
    do {
        sent = send(fd, PyBytes_AS_STRING(args[2]), (size_t)PyBytes_GET_SIZE(args[2]), MSG_DONTWAIT);
    } while (sent < 0 && errno == EINTR);
    return PyLong_FromLong(sent < 0 ? -errno : 0);
}

PyDoc_STRVAR(recv_one_doc,
             "recv_one(fd) -> bytes | int\n\n"
             "One datagram from the non-blocking socket fd, or -errno (-EAGAIN: nothing queued).");

static PyObject *recv_one(PyObject *module, PyObject *arg) {
    int fd = (int)PyLong_AsLong(arg);
    if (PyErr_Occurred()) {
        return NULL;
    }
    ssize_t got;
    do {
        got = recv(fd, reply_buf, sizeof(reply_buf), MSG_DONTWAIT);
    } while (got < 0 && errno == EINTR);
    if (got < 0) {
        return PyLong_FromLong(errno == EWOULDBLOCK ? -EAGAIN : -errno);
    }
    return PyBytes_FromStringAndSize(reply_buf, (Py_ssize_t)got);
}

PyDoc_STRVAR(disconnect_doc,
             "disconnect(fd) -> int\n\n"
             "connect() the UDP socket fd to AF_UNSPEC, which gives its port back to the kernel,\n"
             "then ask (poll, no wait) whether anything is left on it. Returns 0: disconnected and\n"
             "nothing queued; 1: disconnected, datagrams queued (read them before reuse); -1: an\n"
             "error is pending on it; or -errno when the disconnect itself failed.");

static PyObject *disconnect(PyObject *module, PyObject *arg) {
    int fd = (int)PyLong_AsLong(arg);
    if (PyErr_Occurred()) {
        return NULL;
    }
    struct sockaddr unspec;
    memset(&unspec, 0, sizeof(unspec));
    unspec.sa_family = AF_UNSPEC;
    if (connect(fd, &unspec, sizeof(unspec)) < 0) {
        return PyLong_FromLong(-errno);
    }
    struct pollfd p = {.fd = fd, .events = POLLIN, .revents = 0};
    int ready;
    do {
        ready = poll(&p, 1, 0);
    } while (ready < 0 && errno == EINTR);
    if (ready < 0) {
        return PyLong_FromLong(-errno);
    }
    if (ready == 0) {
        return PyLong_FromLong(0);
    }
    return PyLong_FromLong(p.revents & (POLLERR | POLLHUP | POLLNVAL) ? -1 : 1);
}

static PyMethodDef methods[] = {
    {"recv_into", (PyCFunction)(void (*)(void))recv_into, METH_FASTCALL, recv_into_doc},
    {"send_from", (PyCFunction)(void (*)(void))send_from, METH_FASTCALL, send_from_doc},
    {"address", address, METH_O, address_doc},
    {"connect_send", (PyCFunction)(void (*)(void))connect_send, METH_FASTCALL, connect_send_doc},
    {"recv_one", recv_one, METH_O, recv_one_doc},
    {"disconnect", disconnect, METH_O, disconnect_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "dns_svc._mmsg",
    "recvmmsg/sendmmsg for the DNS service's listening UDP socket; an upstream socket's calls.",
    -1,
    methods,
};

PyMODINIT_FUNC PyInit__mmsg(void) {
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "MAX_BATCH", MAX_BATCH) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}

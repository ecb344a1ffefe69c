/* SPDX-License-Identifier: MIT */
/*
 * compat_v2_names.h - compat_v2.tern's generated code under other C names
 * for the few symbols it defines outside its header, so that it links in
 * one program beside compat_v1.tern's (which defines the same ones: same
 * services).  Included first by each translation unit that includes
 * compat_v2.tern.h.
 */
#ifndef TERN_TESTS_COMPAT_V2_NAMES_H
#define TERN_TESTS_COMPAT_V2_NAMES_H

#define store_register v2_store_register
#define store_service  v2_store_service
#define audit_register v2_audit_register
#define audit_service  v2_audit_service

#endif

"""residency"""
